import Foundation
import Tensor

/// One tensor's entry in a safetensors header.
public struct TensorEntry: Sendable, Equatable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    /// Byte range within the data section (after the 8-byte length and the header).
    public let begin: Int
    public let end: Int
}

/// A parsed and fully validated safetensors header.
///
/// Rules enforced (each names the tensor at fault): the header length fits the file and the
/// 100 MB cap; the header is UTF-8 JSON holding an object; `__metadata__` maps strings to strings;
/// every dtype is known; shapes are non-negative integers whose byte size does not overflow and
/// equals the entry's byte range; ranges sorted by offset start at 0, touch with no gap and no
/// overlap, and end exactly where the file ends.
public struct SafeTensorsHeader: Sendable {
    public static let maxHeaderBytes = 100 * 1024 * 1024

    public let entries: [TensorEntry]
    public let metadata: [String: String]
    /// Where the data section starts in the file.
    public let dataStart: Int

    public func entry(_ name: String) -> TensorEntry? { entries.first { $0.name == name } }

    public init(parsing bytes: UnsafeRawBufferPointer, file: String) throws {
        func fail(_ location: String?, _ message: String) -> ModelFileError {
            ModelFileError(file: file, location: location, message)
        }
        func fail(_ message: String) -> ModelFileError { ModelFileError(file: file, message) }
        guard bytes.count >= 8 else {
            throw fail("file is \(bytes.count) bytes, shorter than the 8-byte safetensors header length")
        }
        let headerLength = bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self).littleEndian
        guard headerLength >= 2 else {
            throw fail("header length \(headerLength) is too small to hold a JSON object")
        }
        guard headerLength <= UInt64(Self.maxHeaderBytes) else {
            throw fail("header length \(headerLength) exceeds the 100 MB limit")
        }
        guard headerLength <= UInt64(bytes.count - 8) else {
            throw fail("header length \(headerLength) runs past the end of the \(bytes.count)-byte file (truncated?)")
        }
        let n = Int(headerLength)
        let headerBytes = UnsafeRawBufferPointer(rebasing: bytes[8..<(8 + n)])
        guard let text = String(validating: headerBytes, as: UTF8.self) else {
            throw fail("header is not valid UTF-8")
        }
        let json: Any
        do {
            json = try JSONSerialization.jsonObject(with: Data(text.utf8), options: [])
        } catch {
            throw fail("header is not valid JSON")
        }
        guard let object = json as? [String: Any] else {
            throw fail("header JSON is not an object")
        }

        var metadata: [String: String] = [:]
        var entries: [TensorEntry] = []
        for (name, value) in object {
            if name == "__metadata__" {
                guard let map = value as? [String: Any] else {
                    throw fail("__metadata__", "is not an object of strings")
                }
                for (k, v) in map {
                    guard let s = v as? String else {
                        throw fail("__metadata__", "value of '\(k)' is not a string")
                    }
                    metadata[k] = s
                }
                continue
            }
            let where_ = "tensor '\(name)'"
            guard let info = value as? [String: Any] else { throw fail(where_, "entry is not an object") }
            guard let dtypeName = info["dtype"] as? String else { throw fail(where_, "has no string 'dtype'") }
            guard let dtype = DType(rawValue: dtypeName) else {
                throw fail(where_, "dtype '\(dtypeName)' is not a safetensors dtype")
            }
            guard let shapeArray = info["shape"] as? [Any] else { throw fail(where_, "has no 'shape' array") }
            var shape: [Int] = []
            for d in shapeArray {
                guard let dim = Self.exactInt(d), dim >= 0 else {
                    throw fail(where_, "shape \(shapeArray) holds a value that is not a non-negative integer")
                }
                shape.append(dim)
            }
            guard let offsets = info["data_offsets"] as? [Any], offsets.count == 2,
                  let begin = Self.exactInt(offsets[0]), let end = Self.exactInt(offsets[1]),
                  begin >= 0, end >= begin
            else {
                throw fail(where_, "data_offsets is not a pair [begin, end] with 0 <= begin <= end")
            }
            for key in info.keys where !["dtype", "shape", "data_offsets"].contains(key) {
                throw fail(where_, "unknown field '\(key)'")
            }
            var elements = 1
            for dim in shape {
                let (product, overflow) = elements.multipliedReportingOverflow(by: dim)
                guard !overflow else { throw fail(where_, "shape \(formatShape(shape)) overflows the element count") }
                elements = product
            }
            let (needed, overflow) = elements.multipliedReportingOverflow(by: dtype.byteSize)
            guard !overflow else { throw fail(where_, "shape \(formatShape(shape)) of \(dtype.rawValue) overflows the byte count") }
            guard needed == end - begin else {
                throw fail(where_, "data_offsets [\(begin), \(end)] hold \(end - begin) bytes but shape \(formatShape(shape)) of \(dtype.rawValue) needs \(needed)")
            }
            entries.append(TensorEntry(name: name, dtype: dtype, shape: shape, begin: begin, end: end))
        }

        // Sorted by offset, the ranges must tile the data section exactly.
        entries.sort { ($0.begin, $0.end, $0.name) < ($1.begin, $1.end, $1.name) }
        let dataLength = bytes.count - 8 - n
        var cursor = 0
        for e in entries {
            if e.begin > cursor {
                throw fail("tensor '\(e.name)'", "leaves a gap: data starts at byte \(e.begin) but the previous tensor ends at \(cursor)")
            }
            if e.begin < cursor {
                throw fail("tensor '\(e.name)'", "overlaps the previous tensor: starts at byte \(e.begin), before \(cursor)")
            }
            cursor = e.end
        }
        if cursor < dataLength {
            throw fail("\(dataLength - cursor) bytes after the last tensor are not covered by any tensor")
        }
        if cursor > dataLength {
            throw fail("tensors need \(cursor) data bytes but the file holds \(dataLength) (truncated?)")
        }
        self.entries = entries
        self.metadata = metadata
        self.dataStart = 8 + n
    }

    /// An integer JSON number, refusing fractions and booleans.
    private static func exactInt(_ value: Any) -> Int? {
        guard let number = value as? NSNumber else { return nil }
        #if canImport(Darwin)
        if CFGetTypeID(number) == CFBooleanGetTypeID() { return nil }
        #else
        if type(of: number) != NSNumber.self, "\(type(of: number))".contains("Bool") { return nil }
        #endif
        let d = number.doubleValue
        guard d.rounded() == d, abs(d) < 9.2e18 else { return nil }
        return Int(number.int64Value)
    }
}
