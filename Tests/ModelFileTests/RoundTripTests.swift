import Foundation
import ModelFile
import Tensor
import Testing

@Suite struct RoundTripTests {
    func tempPath(_ name: String) -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("edge-modelfile-\(getpid())")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir.appendingPathComponent(name).path
    }

    @Test func writeThenReadKeepsEverything() throws {
        let w = Tensor(shape: [2, 3], values: [1, 2, 3, 4, 5, 6])
        let b = Tensor(shape: [2], values: [0.5, -0.5])
        var manifest = Manifest(name: "rt", version: 3, input: InputSpec(shape: [3], scale: 0.5), labels: ["no", "yes"],
                                layers: [.dense("w", "b"), .op("softmax")], trainable: ["b"])
        manifest.lineage = .object(["parent": .string("abc"), "step": .number(2)])
        let path = tempPath("rt.safetensors")
        try ModelWriter.write(manifest: manifest, tensors: [TensorBlob(name: "w", tensor: w), TensorBlob(name: "b", tensor: b)], to: path)
        let model = try ModelFile.load(path: path)
        #expect(model.manifest == manifest)
        #expect(model.weight("w").values == w.values)
        #expect(model.weight("b").values == b.values)
        #expect(model.header.dataStart % 8 == 0)
        // Aligned F32 tensors are views of the file's storage, not copies.
        #expect(model.weight("w").storage === model.storage)
    }

    @Test func halfPrecisionIsWidened() throws {
        var m = ValidModel()
        let halves: [Float16] = [0.5, -1.25, 2]
        m.tensors.removeAll { $0.name == "fc1.bias" }
        m.tensors.insert(("fc1.bias", "F16", [3], halves.withUnsafeBytes { Array($0) }), at: 0)
        let bf: [UInt16] = [Float(1.5), -3, 0.25].map { UInt16($0.bitPattern >> 16) }
        m.tensors.removeAll { $0.name == "fc2.bias" }
        m.tensors.append(("fc2.bias", "BF16", [2], Array(bf.prefix(2).withUnsafeBytes { Array($0) })))
        let model = try load(m.raw().bytes())
        #expect(model.weight("fc1.bias").values == [0.5, -1.25, 2])
        #expect(model.weight("fc2.bias").values == [1.5, -3])
    }

    @Test func misalignedF32IsCopiedOnce() throws {
        var m = ValidModel()
        // A 2-byte F16 tensor first shifts every following F32 tensor off 4-byte alignment.
        m.tensors.insert(("pad", "F16", [1], [0, 0]), at: 0)
        let model = try load(m.raw().bytes())
        #expect(model.weight("fc1.weight").values == (0..<12).map { Float($0) / 10 - 0.5 })
    }

    @Test func failedWriteLeavesOldFile() throws {
        let path = tempPath("keep.safetensors")
        try ModelWriter.writeAtomically([1, 2, 3], to: path)
        #expect(throws: ModelFileError.self) {
            try ModelWriter.writeAtomically([4, 5, 6], to: "/nonexistent-dir/keep.safetensors")
        }
        #expect(FileManager.default.contents(atPath: path).map(Array.init) == [1, 2, 3])
    }
}
