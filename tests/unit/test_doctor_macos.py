"""`shuru doctor` on macOS, checked on Linux: each check is a pure function of the facts
gathered on a Mac (helper path, codesign's output, the helper's hello, the image manifest),
so every verdict and every fix is tested here with facts a Mac would give."""

import dataclasses

import pytest

from shuru.cli import doctor
from shuru.cli.doctor import (MacFacts, Ran, check_mac_entitlement, check_mac_helper,
                              check_mac_image_arch, check_mac_signature, check_mac_vz,
                              entitlements, mac_checks)

HELPER = "/opt/shuru/bin/shuru-helper"
PLIST = "/src/shuru/helper/shuru-helper.entitlements"
SIGN = f"codesign --sign - --entitlements {PLIST} --force {HELPER}"
ENTITLED_XML = """Executable=/opt/shuru/bin/shuru-helper
<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0"><dict><key>com.apple.security.virtualization</key><true/></dict></plist>
"""
GOOD = MacFacts(
    macos="14.5", machine="arm64", helper=HELPER,
    codesign=Ran(0, ENTITLED_XML, f"Executable={HELPER}\n"),
    hello={"id": 1, "ok": True, "version": 1, "helper": "0.3.0", "driver": "vz",
           "capabilities": {"save_state": True, "pause": True}},
    image_manifest={"format": 1, "image_id": "abc", "arch": "arm64"},
    entitlements_file=PLIST)


def with_(**changes) -> MacFacts:
    return dataclasses.replace(GOOD, **changes)


def test_a_good_mac_passes_every_check():
    checks = mac_checks(GOOD)
    assert [c.name for c in checks] == ["helper", "helper signature",
                                        "virtualization entitlement", "virtualization",
                                        "image architecture"]
    assert all(c.ok for c in checks), checks
    vz = check_mac_vz(GOOD)
    assert "shuru-helper 0.3.0" in vz.detail and "macOS 14.5" in vz.detail
    assert "fast start: yes" in vz.detail


# ---- the helper and its signature -----------------------------------------------------


def test_no_helper_says_how_to_build_one_and_the_rest_is_not_checked():
    facts = with_(helper=None, codesign=None, hello=None,
                  helper_problem="shuru-helper not found: SHURU_HELPER is not set")
    helper = check_mac_helper(facts)
    assert not helper.ok and "SHURU_HELPER is not set" in helper.detail
    assert "swift build -c release" in helper.fix and "SHURU_HELPER" in helper.fix
    for check in (check_mac_signature(facts), check_mac_entitlement(facts), check_mac_vz(facts)):
        assert not check.ok and check.detail.startswith("not checked")


def test_an_unsigned_helper_names_the_exact_codesign_command():
    facts = with_(codesign=Ran(1, "", f"{HELPER}: code object is not signed at all\n"))
    signature = check_mac_signature(facts)
    assert not signature.ok and "not signed at all" in signature.detail
    assert signature.fix == SIGN
    assert not check_mac_entitlement(facts).ok


def test_a_signature_without_the_entitlement_fails_with_the_same_fix():
    # What the linker's automatic ad-hoc signature on Apple silicon looks like: signed, no
    # entitlements at all.
    facts = with_(codesign=Ran(0, "", f"Executable={HELPER}\n"))
    assert check_mac_signature(facts).ok
    entitlement = check_mac_entitlement(facts)
    assert not entitlement.ok and "com.apple.security.virtualization" in entitlement.detail
    assert entitlement.fix == SIGN
    false = ENTITLED_XML.replace("<true/>", "<false/>")
    assert not check_mac_entitlement(with_(codesign=Ran(0, false, ""))).ok


def test_without_a_checkout_the_fix_says_what_the_entitlements_file_holds():
    fix = check_mac_entitlement(with_(codesign=Ran(0, "", ""), entitlements_file=None)).fix
    assert fix.startswith(f"codesign --sign - --entitlements shuru-helper.entitlements "
                          f"--force {HELPER}")
    assert "com.apple.security.virtualization set to true" in fix


def test_no_codesign_points_at_the_command_line_tools():
    check = check_mac_signature(with_(codesign=None, codesign_problem="codesign is not on PATH"))
    assert not check.ok and "codesign is not on PATH" in check.detail
    assert "xcode-select --install" in check.fix


@pytest.mark.parametrize("output, want", [
    (ENTITLED_XML, {"com.apple.security.virtualization": True}),
    # codesign without --xml on newer macOS
    ("Executable=/x\n[Dict]\n\t[Key] com.apple.security.virtualization\n\t[Value]\n"
     "\t\t[Bool] true\n", {"com.apple.security.virtualization": True}),
    ("[Dict]\n\t[Key] com.apple.security.virtualization\n\t[Value]\n\t\t[Bool] false\n",
     {"com.apple.security.virtualization": False}),
    # older codesigns print a blob header before the plist
    ("\xfa\xde qq<?xml version=\"1.0\"?><plist version=\"1.0\"><dict><key>a</key><string>b"
     "</string></dict></plist>", {"a": "b"}),
    ("", None),
    ("<plist version=\"1.0\"><dict><key>a</key>", None),  # damaged
    ("<plist version=\"1.0\"><array><true/></array></plist>", None),  # not a dict
])
def test_entitlements_are_read_from_each_codesign_output_form(output, want):
    assert entitlements(output) == want


# ---- Virtualization.framework ---------------------------------------------------------


def test_an_old_macos_is_refused_before_anything_else():
    check = check_mac_vz(with_(macos="12.6.1"))
    assert not check.ok and "macOS 12.6.1" in check.detail and "macOS 13" in check.detail
    assert check.fix == "upgrade macOS"


def test_a_helper_without_the_vz_driver_is_reported_with_its_words():
    problem = ("shuru-helper exited with status 2 before it was ready; its log:\nthe vz "
               "driver needs macOS 13 or later with Virtualization.framework")
    check = check_mac_vz(with_(hello=None, hello_problem=problem))
    assert not check.ok and "the vz driver needs macOS 13" in check.detail
    process = check_mac_vz(with_(hello={**GOOD.hello, "driver": "process"}))
    assert not process.ok and "'process'" in process.detail


@pytest.mark.parametrize("caps", [{"save_state": False, "pause": True}, ["save_state"], None])
def test_no_saved_state_support_is_fine_but_said(caps):
    check = check_mac_vz(with_(macos="13.6", machine="x86_64",
                               hello={**GOOD.hello, "capabilities": caps}))
    assert check.ok and "fast start: no" in check.detail and "macOS 14" in check.detail


# ---- the image's architecture ---------------------------------------------------------


def test_an_amd64_image_on_apple_silicon_says_how_to_get_an_arm64_one():
    check = check_mac_image_arch(with_(image_manifest={"format": 1, "arch": "amd64"}))
    assert not check.ok and "amd64" in check.detail and "arm64" in check.detail
    assert "shuru init --arch arm64" in check.fix and "shuru image import" in check.fix


def test_a_manifest_without_arch_is_an_amd64_image():
    assert not check_mac_image_arch(with_(image_manifest={"format": 1})).ok
    intel = check_mac_image_arch(with_(machine="x86_64", image_manifest={"format": 1}))
    assert intel.ok and "amd64" in intel.detail


@pytest.mark.parametrize("manifest, machine, words", [
    ({"format": 1, "arch": 5}, "arm64", "names no architecture"),
    ({"format": 1, "arch": ""}, "arm64", "names no architecture"),
    (None, "arm64", "not checked: no guest image"),
    ({"format": 1, "arch": "arm64"}, "ppc", "unknown Mac architecture"),
])
def test_image_arch_reads_the_manifest_defensively(manifest, machine, words):
    check = check_mac_image_arch(with_(image_manifest=manifest, machine=machine))
    assert not check.ok and words in check.detail


# ---- the whole list on a Mac ----------------------------------------------------------


def test_doctor_on_a_mac_runs_the_mac_checks_and_not_qemus(monkeypatch, tmp_path):
    monkeypatch.setenv("SHURU_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SHURU_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(doctor, "gather_mac_facts", lambda: GOOD)
    monkeypatch.setattr(doctor, "check_accel", lambda: pytest.fail("QEMU checked on a Mac"))
    names = [c.name for c in doctor.run_checks("darwin")]
    assert names == ["python", "helper", "helper signature", "virtualization entitlement",
                     "virtualization", "guest image", "image architecture", "fast start",
                     "runtime dir"]


def test_gathering_reads_codesign_and_the_helpers_own_words(monkeypatch, tmp_path):
    """The I/O shell, with a stand-in codesign and a helper built without the vz driver (it
    exits at once saying so, as the real one does): the facts carry what each said."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    codesign = bin_dir / "codesign"
    codesign.write_text("#!/bin/sh\necho \"args: $*\" >&2\ncat <<'X'\n" + ENTITLED_XML + "X\n")
    helper = tmp_path / "shuru-helper"
    helper.write_text("#!/bin/sh\necho 'the vz driver needs macOS 13 or later with "
                      "Virtualization.framework; this build has none' >&2\nexit 2\n")
    for script in (codesign, helper):
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("SHURU_HELPER", str(helper))
    monkeypatch.setenv("SHURU_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SHURU_RUNTIME_DIR", str(tmp_path / "run"))
    facts = doctor.gather_mac_facts()
    assert facts.helper == str(helper)
    assert facts.codesign.status == 0
    assert facts.codesign.stderr.strip() == f"args: --display --entitlements - --xml {helper}"
    assert check_mac_entitlement(facts).ok
    assert facts.hello is None and "this build has none" in facts.hello_problem
    assert facts.image_manifest is None
    vz = check_mac_vz(facts)
    assert not vz.ok and "this build has none" in vz.detail
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
