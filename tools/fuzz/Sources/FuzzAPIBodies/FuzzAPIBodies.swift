import AgentAPI
import Foundation

/// The JSON bodies agentd decodes with JSONDecoder (`/v1/feedback`, `/v1/models/rollback`,
/// `/v1/infer`'s fallback): no crash, and what decodes survives an encode and a decode unchanged.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzAPIBodies(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 1 else { return 0 }
    // The first byte picks the body type; the rest is the body.
    let body = Data(bytes: data + 1, count: size - 1)
    switch data[0] % 3 {
    case 0:
        guard let f = try? JSONDecoder().decode(FeedbackRequest.self, from: body) else { return 0 }
        let again = roundTrip(f)
        precondition(again.id == f.id && again.label == f.label && again.input?.map(\.bitPattern) == f.input?.map(\.bitPattern),
                     "feedback body changed in a round trip")
    case 1:
        guard let r = try? JSONDecoder().decode(RollbackRequest.self, from: body) else { return 0 }
        precondition(roundTrip(r).version == r.version, "rollback body changed in a round trip")
    default:
        guard let i = try? JSONDecoder().decode(InferRequest.self, from: body) else { return 0 }
        let again = roundTrip(i)
        precondition(again.inputs.map { $0.map(\.bitPattern) } == i.inputs.map { $0.map(\.bitPattern) }
                     && again.priority == i.priority && again.deadlineMs?.bitPattern == i.deadlineMs?.bitPattern,
                     "infer body changed in a round trip")
    }
    return 0
}

/// Encodes and decodes again; a decoded body holds only finite numbers and valid strings, so both steps must succeed.
func roundTrip<T: Codable>(_ value: T) -> T {
    let data: Data
    do {
        data = try JSONEncoder().encode(value)
    } catch {
        fatalError("a decoded \(T.self) does not encode: \(error)")
    }
    do {
        return try JSONDecoder().decode(T.self, from: data)
    } catch {
        fatalError("an encoded \(T.self) does not decode (\(error)): \(String(decoding: data, as: UTF8.self))")
    }
}
