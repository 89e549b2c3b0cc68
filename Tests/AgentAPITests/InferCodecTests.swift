import AgentAPI
import Foundation
import Testing

@Suite struct InferCodecTests {
    /// Whatever the fast reader accepts, Foundation's decoder reads the same.
    func agreesWithJSONDecoder(_ body: String, n: Int, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let fast = try #require(InferCodec.decode(Data(body.utf8), rowLength: n), "fast path refused \(body)", sourceLocation: sourceLocation)
        let slow: InferRequest
        do {
            slow = try JSONDecoder().decode(InferRequest.self, from: Data(body.utf8))
        } catch {
            Issue.record("JSONDecoder refused what the fast path read: \(body): \(error)", sourceLocation: sourceLocation)
            return
        }
        #expect(fast.count == slow.inputs.count, sourceLocation: sourceLocation)
        #expect(fast.rows.map(\.bitPattern) == slow.inputs.flatMap { $0 }.map(\.bitPattern), "\(body)", sourceLocation: sourceLocation)
        #expect(fast.priority == slow.priority, sourceLocation: sourceLocation)
        #expect(fast.deadlineMs == slow.deadlineMs, sourceLocation: sourceLocation)
    }

    @Test func plainBodiesDecodeAsJSONDecoderDoes() throws {
        try agreesWithJSONDecoder(#"{"inputs": [[1, 2.5, -3e2], [0, -0, 1E-7]]}"#, n: 3)
        try agreesWithJSONDecoder(" \n{ \"deadline_ms\" : 12.5 ,\"inputs\":[ [ 0.1 ,0.2]\t], \"priority\": \"throughput\" } \r\n", n: 2)
        try agreesWithJSONDecoder(#"{"inputs": [], "priority": null, "deadline_ms": null}"#, n: 4)
        // Decimal → Float directly: values where rounding through Double would differ, and a
        // subnormal, against JSONDecoder and the standard library's Float(String). (This body
        // once failed intermittently under the parallel suite: training left denormals-are-zero
        // set on a shared thread, and JSONDecoder then refused 1e-45. Training now restores the
        // thread's floating-point mode.)
        let special = ["1.00000005960464477539062500001", "0.3", "3.4028235e38", "1e-45", "16777217"]
        let body = #"{"inputs": [[\#(special.joined(separator: ", "))]]}"#
        try agreesWithJSONDecoder(body, n: 5)
        let decoded = try #require(InferCodec.decode(Data(body.utf8), rowLength: 5))
        #expect(decoded.rows.map(\.bitPattern) == special.map { Float($0)!.bitPattern })
        var state: UInt64 = 7
        for _ in 0..<200 {
            let row = (0..<8).map { _ -> String in
                state = state &* 6364136223846793005 &+ 1442695040888963407
                let v = Double(Int64(bitPattern: state)) / Double(Int64.max) * pow(10, Double(Int(state >> 59)) - 16)
                return [String(v), String(Float(v)), String(format: "%.9e", v)][Int(state >> 20) % 3]
            }
            try agreesWithJSONDecoder(#"{"inputs": [[\#(row.joined(separator: ","))]]}"#, n: 8)
        }
    }

    @Test func anythingElseIsLeftToJSONDecoder() {
        for body in [#"{"inputs": [[1, 2]]}"#,  // wrong row length: the fallback words the error
                     #"{"inputs": [[1, 2, 3]], "extra": 1}"#, #"{"inputs": [[1, 2, 3]], "inputs": [[1, 2, 3]]}"#,
                     #"{"inp\u0075ts": [[1, 2, 3]]}"#, #"{"inputs": [[1, 2, 3]], "priority": "a\"b"}"#,
                     #"{"inputs": [[01, 2, 3]]}"#, #"{"inputs": [[1., 2, 3]]}"#, #"{"inputs": [[+1, 2, 3]]}"#,
                     #"{"inputs": [[NaN, 2, 3]]}"#, #"{"inputs": [[0x10, 2, 3]]}"#, #"{"inputs": [[1, 2, 3],]}"#,
                     #"{"inputs": [[1, 2, 3]]"#, #"{"inputs": [[1, 2, 3]]} x"#, "{}", "[]", "", "null",
                     #"{"inputs": [["1", 2, 3]]}"#, #"{"deadline_ms": 5}"#] {
            #expect(InferCodec.decode(Data(body.utf8), rowLength: 3) == nil, "\(body)")
        }
    }

    /// Bodies the fuzzer found the fast path reading while JSONDecoder refuses them (invalid UTF-8
    /// in a string, numbers out of Float or Double range): now both refuse.
    @Test func refusesWhatJSONDecoderRefuses() throws {
        var invalidUTF8 = Data(#"{"inputs": [[1, 2, 3]], "priority": "l"#.utf8)
        invalidUTF8 += [0xFF, 0xC3]
        invalidUTF8 += Data(#"ncy"}"#.utf8)
        let bodies = [invalidUTF8] + [
            #"{"inputs": [[1e39, 2, 3]]}"#, #"{"inputs": [[1, -1e39, 3]]}"#, #"{"inputs": [[1, 2, 1e-46]]}"#,
            #"{"inputs": [[1, 2, 3]], "deadline_ms": 1e309}"#, #"{"inputs": [[1, 2, 3]], "deadline_ms": 1e-330}"#,
            #"{"inputs": [[0e9, 2, 3]]}"#, #"{"inputs": [[1, 0.00e1, 3]]}"#, #"{"inputs": [[1, 2, -0.0e-1]]}"#,
        ].map { Data($0.utf8) }
        for body in bodies {
            #expect(InferCodec.decode(body, rowLength: 3) == nil, "\(String(decoding: body, as: UTF8.self))")
            #expect(throws: (any Error).self) { try JSONDecoder().decode(InferRequest.self, from: body) }
        }
        // Zero without an exponent is read here, as JSONDecoder reads it.
        try agreesWithJSONDecoder(#"{"inputs": [[0, -0.0, 0.000]], "deadline_ms": -0.00}"#, n: 3)
        // Zero with an exponent is left to JSONDecoder, which takes some and refuses others.
        #expect(InferCodec.decode(Data(#"{"inputs": [[0e10, 0.0e9, 0e-9]]}"#.utf8), rowLength: 3) == nil)
        #expect((try? JSONDecoder().decode(InferRequest.self, from: Data(#"{"inputs": [[0e10, 0.0e9, 0e-9]]}"#.utf8))) != nil)
    }

    @Test func answersAreByteForByteWhatJSONEncoderWrites() throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        let scores: [Float] = [0, -0.0, 1, 0.5, 1e-5, 1.17549435e-38, 1e-45, 3.4028235e38, 123456.79, 0.1, .infinity, -.infinity, .nan, 16777216, 1e7]
        let response = InferResponse(
            model: ModelRef(name: "digits/mlp \"v\" \\ é\n\u{1}", version: 12, precision: "int8"),
            results: [InferResult(id: "3-17", class: 4, label: "fünf\t/", scores: scores, precision: "int8"),
                      InferResult(id: "3-18", class: 0, label: "0", scores: [0.25, 0.75], precision: "fp32")])
        let expected = try encoder.encode(response)
        let got = Data(InferCodec.encode(response))
        #expect(got == expected, "\(String(decoding: got, as: UTF8.self))\n\(String(decoding: expected, as: UTF8.self))")
    }
}
