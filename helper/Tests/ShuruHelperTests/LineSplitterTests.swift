/// Console output to lines: endings, partial lines, caps on hostile output.
import ShuruHelperCore
import XCTest

final class LineSplitterTests: XCTestCase {
    func testSplitsAcrossFeedsAndStripsLineEndings() {
        var s = LineSplitter()
        XCTAssertEqual(s.feed(Array("one\r\ntw".utf8)), ["one"])
        XCTAssertEqual(s.feed(Array("o\nthree".utf8)), ["two"])
        XCTAssertEqual(s.finish(), "three")
        XCTAssertNil(s.finish())
    }

    func testLongLinesAreCutAndBadUTF8Replaced() {
        var s = LineSplitter(maxLine: 4)
        XCTAssertEqual(s.feed(Array("abcdefghij\n".utf8)), ["abcd", "efgh", "ij"])
        XCTAssertEqual(s.feed([0x61, 0xff, 0x0a]), ["a\u{fffd}"])
    }
}
