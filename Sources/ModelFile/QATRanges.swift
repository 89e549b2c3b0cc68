/// The manifest's `qat` section: activation ranges learned by quantization-aware training, which
/// `quantize` uses in place of calibrated ones for the same tensors.
///
///     "qat": {"precision": "int8", "activations": {"3": [0, 5.21], "6": [0, 7.9]}}
///
/// Keys are tensor indices as in the quantization section (0: the preprocessed input, l + 1:
/// layer l's output); each range is [lo, hi] with finite lo ≤ hi.
public struct QATRanges: Equatable, Sendable {
    public var precision: String
    public var activations: [Int: ClosedRange<Float>]

    public init(precision: String, activations: [Int: ClosedRange<Float>]) {
        self.precision = precision
        self.activations = activations
    }

    /// Reads the section of a model with `tensors` tensors (layers + 1); the error message names
    /// the key at fault ("activations.7: ...").
    public init(_ json: JSONValue, tensors: Int) throws(QATRangesError) {
        guard case .object(let o) = json else { throw QATRangesError("is not an object") }
        if let unknown = o.keys.sorted().first(where: { $0 != "precision" && $0 != "activations" }) {
            throw QATRangesError("unknown key '\(unknown)' (expected precision, activations)")
        }
        guard case .string(let p)? = o["precision"] else { throw QATRangesError("precision: missing or not a string") }
        guard p == "int8" else { throw QATRangesError("precision: '\(p)' is not supported (int8)") }
        guard case .object(let a)? = o["activations"] else { throw QATRangesError("activations: missing or not an object") }
        var ranges: [Int: ClosedRange<Float>] = [:]
        for key in a.keys.sorted() {
            guard let t = Int(key), t >= 0, t < tensors, String(t) == key else {
                // A key from the file is shown quoted and cut when it is not a plain number: a
                // newline or a megabyte in it would break the one-line error.
                let plain = key.count <= 20 && key.allSatisfy { $0.isASCII && ($0.isNumber || $0 == "-") }
                let shown = plain ? key : String(key.prefix(32)).debugDescription
                throw QATRangesError("activations.\(shown): not a tensor index in 0...\(tensors - 1)")
            }
            guard case .array(let pair)? = a[key], pair.count == 2, case .number(let lo) = pair[0], case .number(let hi) = pair[1] else {
                throw QATRangesError("activations.\(key): expected [lo, hi]")
            }
            let l = Float(lo), h = Float(hi)
            guard l.isFinite, h.isFinite, l <= h else {
                throw QATRangesError("activations.\(key): [\(lo), \(hi)] is not a finite range with lo <= hi")
            }
            ranges[t] = l...h
        }
        self.init(precision: p, activations: ranges)
    }

    public var json: JSONValue {
        var a: [String: JSONValue] = [:]
        for (t, r) in activations { a[String(t)] = .array([.number(Double(r.lowerBound)), .number(Double(r.upperBound))]) }
        return .object(["precision": .string(precision), "activations": .object(a)])
    }
}

public struct QATRangesError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
