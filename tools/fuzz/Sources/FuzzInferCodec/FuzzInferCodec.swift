import AgentAPI
import Foundation

/// The `/v1/infer` fast path against Foundation: whatever InferCodec.decode accepts, JSONDecoder
/// must accept with the same rows, priority and deadline (the codec's contract), and the answer
/// writer must produce JSONEncoder's bytes for what was read.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzInferCodec(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 1 else { return 0 }
    // The first byte picks the model's row length (1...8); the rest is the body.
    let rowLength = Int(data[0] % 8) + 1
    let body = Data(bytes: data + 1, count: size - 1)
    guard let fast = InferCodec.decode(body, rowLength: rowLength) else { return 0 }
    let slow: InferRequest
    do {
        slow = try JSONDecoder().decode(InferRequest.self, from: body)
    } catch {
        fatalError("InferCodec read a body that JSONDecoder refuses (\(error)): \(String(decoding: body, as: UTF8.self))")
    }
    precondition(fast.count == slow.inputs.count, "row count \(fast.count) vs \(slow.inputs.count)")
    precondition(slow.inputs.allSatisfy { $0.count == rowLength }, "a row of the wrong length was accepted")
    precondition(fast.rows.map(\.bitPattern) == slow.inputs.flatMap { $0 }.map(\.bitPattern),
                 "values differ: \(fast.rows) vs \(slow.inputs)")
    precondition(fast.priority == slow.priority, "priority \(String(describing: fast.priority)) vs \(String(describing: slow.priority))")
    precondition(fast.deadlineMs?.bitPattern == slow.deadlineMs?.bitPattern,
                 "deadline_ms \(String(describing: fast.deadlineMs)) vs \(String(describing: slow.deadlineMs))")

    // The answer for these rows, with the request's strings standing in for names and labels.
    let text = fast.priority ?? "digits/mlp"
    let results = (0..<fast.count).map { r in
        InferResult(id: "\(r)-\(text)", class: r, label: text, scores: Array(fast.rows[(r * rowLength)..<((r + 1) * rowLength)]),
                    precision: r % 2 == 0 ? "int8" : "fp32")
    }
    let response = InferResponse(model: ModelRef(name: text, version: fast.count, precision: "int8"), results: results)
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
    let expected = try! encoder.encode(response)
    let got = Data(InferCodec.encode(response))
    precondition(got == expected, "answer differs:\n\(String(decoding: got, as: UTF8.self))\n\(String(decoding: expected, as: UTF8.self))")
    return 0
}
