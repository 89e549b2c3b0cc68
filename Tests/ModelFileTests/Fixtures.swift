import Foundation
import ModelFile
import Tensor

/// Builds safetensors bytes by hand so a test can break exactly one rule.
struct RawFile {
    var header: [String: Any]
    var data: [UInt8]
    /// Overrides the 8-byte header length (to lie about it).
    var declaredLength: UInt64?
    var headerBytes: [UInt8]?

    func bytes() -> [UInt8] {
        let json = headerBytes ?? Array(try! JSONSerialization.data(withJSONObject: header, options: [.sortedKeys]))
        var out: [UInt8] = []
        withUnsafeBytes(of: (declaredLength ?? UInt64(json.count)).littleEndian) { out.append(contentsOf: $0) }
        out += json
        out += data
        return out
    }
}

func storage(_ bytes: [UInt8]) -> Storage {
    let s = Storage(byteCount: bytes.count)
    bytes.withUnsafeBytes { s.bytes.copyMemory(from: $0) }
    return s
}

func floats(_ values: [Float]) -> [UInt8] {
    values.withUnsafeBytes { Array($0) }
}

/// A valid MLP 4-3-2 with softmax: manifest plus tensors laid out contiguously.
struct ValidModel {
    var manifest: [String: Any] = [
        "name": "tiny", "version": 1,
        "input": ["shape": [4]],
        "labels": ["a", "b"],
        "layers": [
            ["op": "dense", "weight": "fc1.weight", "bias": "fc1.bias"],
            ["op": "relu"],
            ["op": "dense", "weight": "fc2.weight", "bias": "fc2.bias"],
            ["op": "softmax"],
        ],
    ]
    var tensors: [(name: String, dtype: String, shape: [Int], bytes: [UInt8])] = [
        ("fc1.bias", "F32", [3], floats([0.1, 0.2, 0.3])),
        ("fc1.weight", "F32", [3, 4], floats((0..<12).map { Float($0) / 10 - 0.5 })),
        ("fc2.bias", "F32", [2], floats([0, 0.5])),
        ("fc2.weight", "F32", [2, 3], floats([1, -1, 0.5, -0.5, 0.25, 2])),
    ]
    var metadata: [String: String]? = nil

    func raw() -> RawFile {
        var header: [String: Any] = [:]
        var offset = 0
        var data: [UInt8] = []
        for t in tensors {
            header[t.name] = ["dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.bytes.count]]
            offset += t.bytes.count
            data += t.bytes
        }
        let manifestJSON = String(decoding: try! JSONSerialization.data(withJSONObject: manifest, options: [.sortedKeys]), as: UTF8.self)
        header["__metadata__"] = metadata ?? ["edge.format": "1", "edge.manifest": manifestJSON]
        return RawFile(header: header, data: data)
    }

    mutating func setLayers(_ layers: [[String: Any]]) { manifest["layers"] = layers }

    mutating func replace(_ name: String, dtype: String = "F32", shape: [Int], values: [Float]) {
        tensors.removeAll { $0.name == name }
        tensors.append((name, dtype, shape, floats(values)))
    }
}

func load(_ bytes: [UInt8], file: String = "m.safetensors") throws -> ModelFile {
    try ModelFile(storage: storage(bytes), path: file)
}
