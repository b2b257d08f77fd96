/// Starting a child process with posix_spawn: chosen fds at chosen numbers, its own process
/// group, and a clean signal state.
///
/// posix_spawn rather than fork: the helper is multithreaded, and a forked child of a
/// multithreaded Swift process may not run Swift code. The child gets default dispositions and
/// an empty signal mask, because it would otherwise inherit what the helper (and the
/// dispatch thread that spawns it) ignores or blocks — SIGPIPE above all.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

enum Spawn {
    /// Start `argv` (searched on PATH) with `fds` mapped as child fd → parent fd; every other
    /// fd the helper holds is close-on-exec. Returns the child's pid, which is also its
    /// process group id.
    static func start(_ argv: [String], fds: [Int32: Int32]) throws -> pid_t {
        precondition(!argv.isEmpty)
        // Duplicate every source above the highest target first, so no dup2 can overwrite a
        // source that a later dup2 still needs.
        let floor = (fds.keys.max() ?? 2) + 1
        var sources: [Int32: Int32] = [:]
        defer { sources.values.forEach(Posix.closeQuietly) }
        for (target, source) in fds {
            sources[target] = try Posix.duplicate(source, atLeast: floor)
        }

        #if os(Linux)
        var actions = posix_spawn_file_actions_t()
        var attributes = posix_spawnattr_t()
        #else
        var actions: posix_spawn_file_actions_t? = nil
        var attributes: posix_spawnattr_t? = nil
        #endif
        posix_spawn_file_actions_init(&actions)
        posix_spawnattr_init(&attributes)
        defer {
            posix_spawn_file_actions_destroy(&actions)
            posix_spawnattr_destroy(&attributes)
        }
        for (target, source) in sources {
            posix_spawn_file_actions_adddup2(&actions, source, target)
        }

        var defaults = sigset_t()
        sigfillset(&defaults)
        sigdelset(&defaults, SIGKILL)
        sigdelset(&defaults, SIGSTOP)
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setpgroup(&attributes, 0)
        var flags = Int32(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK)
        #if canImport(Darwin)
        // Belt and braces on macOS: close every fd not named in the file actions.
        flags |= Int32(POSIX_SPAWN_CLOEXEC_DEFAULT)
        #endif
        posix_spawnattr_setflags(&attributes, Int16(flags))

        let cArgs = argv.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) } }
        var pid: pid_t = 0
        #if canImport(Darwin)
        let environment = _NSGetEnviron().pointee
        #else
        let environment = environ
        #endif
        let rc = posix_spawnp(&pid, argv[0], &actions, &attributes, cArgs, environment)
        guard rc == 0 else { throw SystemError("posix_spawnp(\(argv[0]))", errno: rc) }
        return pid
    }
}
