import Foundation
import Testing
import AgentAPI

@Suite struct ResponseParserTests {
    let parser = AgentClient.ResponseParser()

    func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

    @Test func contentLengthFramesOneAnswerAndLeavesTheRest() throws {
        let stream = bytes("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: application/json\r\n\r\nhelloHTTP/1.1 204")
        let (r, used) = try #require(try parser.parse(stream))
        #expect(r.status == 200)
        #expect(r.headers["content-type"] == "application/json")
        #expect(String(decoding: r.body, as: UTF8.self) == "hello")
        #expect(String(decoding: stream[used...], as: UTF8.self) == "HTTP/1.1 204")
    }

    @Test func incompleteAnswersAskForMoreBytes() throws {
        let whole = bytes("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        for cut in 0..<whole.count { #expect(try parser.parse(Array(whole[0..<cut])) == nil) }
        let chunked = bytes("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n")
        for cut in 0..<chunked.count { #expect(try parser.parse(Array(chunked[0..<cut])) == nil) }
        let (r, used) = try #require(try parser.parse(chunked))
        #expect(String(decoding: r.body, as: UTF8.self) == "abcde")
        #expect(used == chunked.count)
    }

    @Test func malformedAnswersAreRefused() {
        for bad in ["HTTP/1.1 OK\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                    "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "HTTP/1.1 200 OK\r\n\r\nbody",
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"] {
            #expect(throws: AgentClientError.self, "\(bad.debugDescription)") { _ = try parser.parse(bytes(bad)) }
        }
    }
}
