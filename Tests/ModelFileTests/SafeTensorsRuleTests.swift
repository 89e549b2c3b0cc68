import Foundation
import ModelFile
import Testing

/// One test per safetensors rule; each file breaks exactly that rule.
@Suite struct SafeTensorsRuleTests {
    func expectError(_ bytes: [UInt8], contains fragment: String, location: String? = nil,
                     sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try load(bytes)
            Issue.record("file was accepted; expected an error containing '\(fragment)'", sourceLocation: sourceLocation)
        } catch let error as ModelFileError {
            #expect(error.file == "m.safetensors", sourceLocation: sourceLocation)
            #expect(error.description.contains(fragment), "\(error)", sourceLocation: sourceLocation)
            if let location { #expect(error.location == location, "\(error)", sourceLocation: sourceLocation) }
            #expect(!error.description.contains("\n"), sourceLocation: sourceLocation)
        } catch {
            Issue.record("unexpected error type \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func validFileLoads() throws {
        let model = try load(ValidModel().raw().bytes())
        #expect(model.layers.count == 4)
        #expect(model.outputShape == [2])
        #expect(model.labels == ["a", "b"])
    }

    @Test func fileShorterThanLengthPrefix() {
        expectError([1, 2, 3], contains: "shorter than the 8-byte")
    }

    @Test func headerLengthTooSmall() {
        var raw = ValidModel().raw()
        raw.declaredLength = 1
        expectError(raw.bytes(), contains: "too small")
    }

    @Test func headerLengthOverLimit() {
        var raw = ValidModel().raw()
        raw.declaredLength = 200 * 1024 * 1024
        expectError(raw.bytes(), contains: "exceeds the 100 MB limit")
    }

    @Test func headerLengthPastEndOfFile() {
        let bytes = ValidModel().raw().bytes()
        let json = Array(bytes[8...]).prefix(40)
        var truncated: [UInt8] = []
        withUnsafeBytes(of: UInt64(5000).littleEndian) { truncated.append(contentsOf: $0) }
        expectError(truncated + json, contains: "runs past the end")
    }

    @Test func headerNotUTF8() {
        var raw = ValidModel().raw()
        raw.headerBytes = [0x7B, 0xFF, 0xFE, 0x7D]
        expectError(raw.bytes(), contains: "not valid UTF-8")
    }

    @Test func headerNotJSON() {
        var raw = ValidModel().raw()
        raw.headerBytes = Array("{\"a\": ".utf8)
        expectError(raw.bytes(), contains: "not valid JSON")
    }

    @Test func headerNotAnObject() {
        var raw = ValidModel().raw()
        raw.headerBytes = Array("[1, 2]".utf8)
        raw.data = []
        expectError(raw.bytes(), contains: "not an object")
    }

    @Test func metadataValueNotString() {
        var raw = ValidModel().raw()
        raw.header["__metadata__"] = ["edge.format": 1]
        expectError(raw.bytes(), contains: "is not a string", location: "__metadata__")
    }

    @Test func unknownDType() {
        var model = ValidModel()
        model.tensors[0].dtype = "Q7"
        expectError(model.raw().bytes(), contains: "dtype 'Q7' is not a safetensors dtype", location: "tensor 'fc1.bias'")
    }

    @Test func negativeDimension() {
        var raw = ValidModel().raw()
        raw.header["fc1.bias"] = ["dtype": "F32", "shape": [-3], "data_offsets": [0, 12]]
        expectError(raw.bytes(), contains: "not a non-negative integer", location: "tensor 'fc1.bias'")
    }

    @Test func fractionalDimension() {
        var raw = ValidModel().raw()
        raw.header["fc1.bias"] = ["dtype": "F32", "shape": [1.5], "data_offsets": [0, 12]]
        expectError(raw.bytes(), contains: "not a non-negative integer", location: "tensor 'fc1.bias'")
    }

    @Test func malformedOffsets() {
        var raw = ValidModel().raw()
        raw.header["fc1.bias"] = ["dtype": "F32", "shape": [3], "data_offsets": [12, 0]]
        expectError(raw.bytes(), contains: "data_offsets is not a pair", location: "tensor 'fc1.bias'")
    }

    @Test func unknownEntryField() {
        var raw = ValidModel().raw()
        raw.header["fc1.bias"] = ["dtype": "F32", "shape": [3], "data_offsets": [0, 12], "stride": [1]]
        expectError(raw.bytes(), contains: "unknown field 'stride'", location: "tensor 'fc1.bias'")
    }

    @Test func sizeDisagreesWithShape() {
        var raw = ValidModel().raw()
        raw.header["fc1.bias"] = ["dtype": "F32", "shape": [2], "data_offsets": [0, 12]]
        expectError(raw.bytes(), contains: "hold 12 bytes but shape [2] of F32 needs 8", location: "tensor 'fc1.bias'")
    }

    @Test func shapeOverflows() {
        var raw = ValidModel().raw()
        raw.header["fc1.bias"] = ["dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 12]]
        expectError(raw.bytes(), contains: "overflows the element count", location: "tensor 'fc1.bias'")
    }

    @Test func byteCountOverflows() {
        var raw = ValidModel().raw()
        raw.header["fc1.bias"] = ["dtype": "F64", "shape": [1 << 61], "data_offsets": [0, 12]]
        expectError(raw.bytes(), contains: "overflows the byte count", location: "tensor 'fc1.bias'")
    }

    @Test func gapBetweenTensors() {
        var raw = ValidModel().raw()
        // fc1.weight moves 4 bytes on; the file grows by 4 so only the gap is wrong.
        raw.header["fc1.weight"] = ["dtype": "F32", "shape": [3, 4], "data_offsets": [16, 64]]
        raw.header["fc2.bias"] = ["dtype": "F32", "shape": [2], "data_offsets": [64, 72]]
        raw.header["fc2.weight"] = ["dtype": "F32", "shape": [2, 3], "data_offsets": [72, 96]]
        raw.data += [0, 0, 0, 0]
        expectError(raw.bytes(), contains: "leaves a gap", location: "tensor 'fc1.weight'")
    }

    @Test func overlappingTensors() {
        var raw = ValidModel().raw()
        raw.header["fc1.weight"] = ["dtype": "F32", "shape": [3, 4], "data_offsets": [8, 56]]
        expectError(raw.bytes(), contains: "overlaps the previous tensor", location: "tensor 'fc1.weight'")
    }

    @Test func trailingBytesNotCovered() {
        var raw = ValidModel().raw()
        raw.data += [1, 2, 3, 4]
        expectError(raw.bytes(), contains: "not covered by any tensor")
    }

    @Test func truncatedData() {
        let bytes = ValidModel().raw().bytes()
        expectError(Array(bytes.dropLast(4)), contains: "truncated")
    }

    @Test func missingFileNamesIt() {
        #expect(throws: ModelFileError.self) { try ModelFile.load(path: "/nonexistent/x.safetensors") }
        do { _ = try ModelFile.load(path: "/nonexistent/x.safetensors") } catch {
            #expect("\(error)".hasPrefix("/nonexistent/x.safetensors: "))
        }
    }
}
