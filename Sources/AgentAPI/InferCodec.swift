import Foundation

/// The hot path's JSON: `/v1/infer` bodies read in one pass straight into flat rows, and answers
/// written without the Codable machinery. Foundation's JSONDecoder spent ~20% of the daemon's CPU
/// under load decoding 64 numbers per request (perf, `agentctl bench-load`), most of it boxing.
///
/// The reader takes only the plain form — an object with `inputs` (rows of JSON numbers),
/// `priority` and `deadline_ms`, keys without escapes. Anything else (another key, an escape, a
/// syntax error, a row of the wrong length) returns nil and the caller falls back to JSONDecoder,
/// which accepts the same documents and phrases the errors, so the two paths never disagree.
public enum InferCodec {
    public struct Decoded: Sendable {
        public var rows: [Float]
        public var count: Int
        public var priority: String?
        public var deadlineMs: Double?

        public init(rows: [Float], count: Int, priority: String? = nil, deadlineMs: Double? = nil) {
            self.rows = rows
            self.count = count
            self.priority = priority
            self.deadlineMs = deadlineMs
        }
    }

    public static func decode(_ data: Data, rowLength n: Int) -> Decoded? {
        data.withUnsafeBytes { raw -> Decoded? in
            guard let base = raw.bindMemory(to: UInt8.self).baseAddress, raw.count > 0 else { return nil }
            var reader = Reader(p: base, end: raw.count)
            return reader.request(rowLength: n)
        }
    }

    private struct Reader {
        let p: UnsafePointer<UInt8>
        let end: Int
        var i = 0

        init(p: UnsafePointer<UInt8>, end: Int) {
            self.p = p
            self.end = end
        }

        mutating func skipSpace() {
            while i < end, p[i] == 0x20 || p[i] == 0x0A || p[i] == 0x0D || p[i] == 0x09 { i += 1 }
        }

        mutating func take(_ c: UInt8) -> Bool {
            skipSpace()
            guard i < end, p[i] == c else { return false }
            i += 1
            return true
        }

        mutating func takeNull() -> Bool {
            skipSpace()
            guard i + 4 <= end, p[i] == 0x6E, p[i + 1] == 0x75, p[i + 2] == 0x6C, p[i + 3] == 0x6C else { return false }
            i += 4
            return true
        }

        /// A string without escapes or control characters, in valid UTF-8 (nil otherwise: the fallback decides).
        mutating func plainString() -> String? {
            guard take(0x22) else { return nil }
            let start = i
            while i < end {
                let c = p[i]
                if c == 0x22 {
                    // Validating, not repairing: JSONDecoder refuses invalid UTF-8, so the fast path must too.
                    guard let s = String(validating: UnsafeBufferPointer(start: p + start, count: i - start), as: UTF8.self) else {
                        return nil
                    }
                    i += 1
                    return s
                }
                if c == 0x5C || c < 0x20 { return nil }
                i += 1
            }
            return nil
        }

        /// A JSON number as Float, converted from the decimal text directly (as JSONDecoder does:
        /// going through Double could round twice).
        mutating func float() -> Float? {
            numberToken { strtof($0, nil) }
        }

        mutating func double() -> Double? {
            numberToken { strtod($0, nil) }
        }

        /// Checks one JSON number (RFC 8259 grammar) and converts the checked token, terminated
        /// in a stack buffer. Numbers that overflow to infinity or underflow to zero are left to the
        /// fallback: JSONDecoder refuses them, so accepting them here would make the two disagree.
        /// So is a zero with an exponent: JSONDecoder refuses some (`0e9`, `0.00e1`) and takes
        /// others (`0e10`, `0.0e9`), found by the infer-codec fuzzer.
        mutating func numberToken<T: FloatingPoint>(_ convert: (UnsafePointer<CChar>) -> T) -> T? {
            skipSpace()
            let start = i
            var nonZero = false
            if i < end, p[i] == 0x2D { i += 1 }
            guard i < end, isDigit(p[i]) else { return nil }
            if p[i] == 0x30 { i += 1 } else { while i < end, isDigit(p[i]) { nonZero = true; i += 1 } }
            if i < end, p[i] == 0x2E {
                i += 1
                guard i < end, isDigit(p[i]) else { return nil }
                while i < end, isDigit(p[i]) { nonZero = nonZero || p[i] != 0x30; i += 1 }
            }
            let exponent = i < end && (p[i] == 0x65 || p[i] == 0x45)
            if exponent {
                i += 1
                if i < end, p[i] == 0x2B || p[i] == 0x2D { i += 1 }
                guard i < end, isDigit(p[i]) else { return nil }
                while i < end, isDigit(p[i]) { i += 1 }
            }
            let length = i - start
            // strtod needs a terminated string; numbers are short, so copy into a stack buffer.
            guard length < 64 else { return nil }
            let value = withUnsafeTemporaryAllocation(of: CChar.self, capacity: 64) { buf -> T in
                UnsafeMutableRawPointer(buf.baseAddress!).copyMemory(from: p + start, byteCount: length)
                buf[length] = 0
                return convert(buf.baseAddress!)
            }
            guard value.isFinite, value != 0 || !(nonZero || exponent) else { return nil }
            return value
        }

        func isDigit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }

        mutating func request(rowLength n: Int) -> Decoded? {
            guard take(0x7B) else { return nil }
            var result = Decoded(rows: [], count: 0)
            var seenInputs = false, seenPriority = false, seenDeadline = false
            if take(0x7D) { return nil }  // {} — no inputs: the fallback reports it
            repeat {
                guard let key = plainString(), take(0x3A) else { return nil }
                switch key {
                case "inputs":
                    guard !seenInputs, take(0x5B) else { return nil }
                    seenInputs = true
                    result.rows.reserveCapacity(n)
                    if !take(0x5D) {
                        repeat {
                            guard take(0x5B) else { return nil }
                            var values = 0
                            if !take(0x5D) {
                                repeat {
                                    guard let v = float() else { return nil }
                                    result.rows.append(v)
                                    values += 1
                                } while take(0x2C)
                                guard take(0x5D) else { return nil }
                            }
                            guard values == n else { return nil }
                            result.count += 1
                        } while take(0x2C)
                        guard take(0x5D) else { return nil }
                    }
                case "priority":
                    guard !seenPriority else { return nil }
                    seenPriority = true
                    if !takeNull() {
                        guard let s = plainString() else { return nil }
                        result.priority = s
                    }
                case "deadline_ms":
                    guard !seenDeadline else { return nil }
                    seenDeadline = true
                    if !takeNull() {
                        guard let d = double() else { return nil }
                        result.deadlineMs = d
                    }
                default:
                    return nil
                }
            } while take(0x2C)
            guard take(0x7D) else { return nil }
            skipSpace()
            guard i == end, seenInputs else { return nil }
            return result
        }
    }

    /// The `/v1/infer` answer, byte for byte what JSONEncoder with sorted keys writes
    /// (non-finite scores as the strings "inf", "-inf", "nan", as the API's encoder does).
    public static func encode(_ response: InferResponse) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(96 + response.results.count * (64 + (response.results.first?.scores.count ?? 0) * 14))
        out += Array(#"{"model":{"name":"#.utf8)
        appendString(response.model.name, to: &out)
        out += Array(#","precision":"#.utf8)
        appendString(response.model.precision, to: &out)
        out += Array(#","version":"#.utf8)
        out += Array(String(response.model.version).utf8)
        out += Array(#"},"results":["#.utf8)
        for (r, result) in response.results.enumerated() {
            if r > 0 { out.append(0x2C) }
            out += Array(#"{"class":"#.utf8)
            out += Array(String(result.class).utf8)
            out += Array(#","id":"#.utf8)
            appendString(result.id, to: &out)
            out += Array(#","label":"#.utf8)
            appendString(result.label, to: &out)
            out += Array(#","precision":"#.utf8)
            appendString(result.precision, to: &out)
            out += Array(#","scores":["#.utf8)
            for (s, v) in result.scores.enumerated() {
                if s > 0 { out.append(0x2C) }
                if v.isNaN {
                    out += Array(#""nan""#.utf8)
                } else if v.isInfinite {
                    out += Array((v > 0 ? #""inf""# : #""-inf""#).utf8)
                } else {
                    // Shortest round-trip digits, without the ".0" of whole numbers (as JSONEncoder).
                    var text = v.description
                    if text.hasSuffix(".0") { text.removeLast(2) }
                    out += Array(text.utf8)
                }
            }
            out += Array("]}".utf8)
        }
        out += Array("]}".utf8)
        return out
    }

    /// A JSON string with the escapes JSONEncoder writes (quote, backslash, slash, control characters).
    static func appendString(_ s: String, to out: inout [UInt8]) {
        out.append(0x22)
        for c in s.utf8 {
            switch c {
            case 0x22: out += [0x5C, 0x22]
            case 0x5C: out += [0x5C, 0x5C]
            case 0x2F: out += [0x5C, 0x2F]
            case 0x0A: out += [0x5C, 0x6E]
            case 0x0D: out += [0x5C, 0x72]
            case 0x09: out += [0x5C, 0x74]
            case 0x08: out += [0x5C, 0x62]
            case 0x0C: out += [0x5C, 0x66]
            case ..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                out += [0x5C, 0x75, 0x30, 0x30, hex[Int(c >> 4)], hex[Int(c & 15)]]
            default: out.append(c)
            }
        }
        out.append(0x22)
    }
}
