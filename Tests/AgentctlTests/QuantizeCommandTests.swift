import Foundation
import Testing

/// `agentctl model quantize` and the commands that run quantized files, as a user drives them.
@Suite(.serialized) struct QuantizeCommandTests {
    static let mlp: String = {
        let dir = temporaryDirectory("qmlp")
        let path = dir + "/mlp.safetensors"
        let r = try! Agentctl.run(["model", "train", "--data", Agentctl.digits, "--arch", "mlp:64-256-256-10", "--epochs", "30",
                                   "--seed", "1", "--out", path])
        precondition(r.status == 0, r.stderr)
        return path
    }()

    func json(_ text: String) throws -> [String: Any] {
        try #require(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    @Test(arguments: [("int8", "kl", 0.3, 0.99), ("int8", "minmax", 0.3, 0.99), ("int8", "percentile", 0.3, 0.99),
                      ("int8", "mse", 0.3, 0.99), ("int4", "kl", 1.5, 0.95)])
    func quantizedDigitsStayWithinBudget(precision: String, method: String, points: Double, agreement: Double) throws {
        let out = temporaryDirectory("q") + "/q.safetensors"
        let r = try Agentctl.run(["model", "quantize", Self.mlp, out, "--calib", Agentctl.digits, "--method", method,
                                  "--precision", precision, "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let report = try json(r.stdout)
        let fp32 = try #require(report["fp32Accuracy"] as? Double), q = try #require(report["quantizedAccuracy"] as? Double)
        #expect((fp32 - q) * 100 <= points, "\(precision)/\(method): \(fp32) -> \(q)")
        #expect(try #require(report["agreement"] as? Double) >= agreement)
        let layers = try #require(report["layers"] as? [[String: Any]])
        #expect(layers.count == 3 && layers.allSatisfy { $0["precision"] as? String == precision })
        // INT8 layers, and INT4 ones with static activations (what quantize writes), report their input scale.
        #expect(layers.allSatisfy { ($0["inputScale"] as? Double).map { $0 > 0 } == true }, "\(layers)")
        // The file runs quantized without recalibration, and can be forced back to FP32.
        let eval = try json(try Agentctl.run(["model", "eval", out, "--data", Agentctl.digits, "--test-split", "--json"]).stdout)
        #expect(eval["precision"] as? String == precision)
        #expect(abs((eval["accuracy"] as? Double ?? 0) - q) < 1e-6)
        let forced = try json(try Agentctl.run(["model", "eval", out, "--data", Agentctl.digits, "--test-split", "--precision", "fp32", "--json"]).stdout)
        #expect(abs((forced["accuracy"] as? Double ?? 0) - fp32) < 1e-6)
        let inspect = try json(try Agentctl.run(["model", "inspect", out, "--json"]).stdout)
        let precisions = (inspect["layers"] as? [[String: Any]])?.compactMap { $0["precision"] as? String }.filter { $0 != "-" }
        #expect(precisions == [precision, precision, precision])
    }

    @Test func autoAndAdaptiveAreRecordedInTheFile() throws {
        let out = temporaryDirectory("auto") + "/q.safetensors"
        let r = try Agentctl.run(["model", "quantize", Self.mlp, out, "--calib", Agentctl.digits, "--precision", "auto",
                                  "--budget", "0.3", "--adaptive", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let report = try json(r.stdout)
        // The layers are chosen on half of the held-out rows and the accuracy reported on the other half.
        let chose = report["selectionRows"] as? Int ?? 0, reported = report["heldOutRows"] as? Int ?? 0
        #expect(chose > 0 && reported > 0 && abs(chose - reported) <= chose / 5, "\(chose) chose, \(reported) reported")
        let adaptive = try #require(report["adaptive"] as? [String: Any])
        #expect((adaptive["escalation_rate"] as? Double ?? 1) <= 0.10)
        #expect((report["adaptiveAgreement"] as? Double ?? 0) >= 0.99)
        let inspect = try Agentctl.run(["model", "inspect", out])
        #expect(inspect.stdout.contains("adaptive threshold"))
        let bench = try Agentctl.run(["model", "bench", out, "--batch", "1,64", "--seconds", "0.05", "--json"])
        #expect(bench.status == 0)
        #expect(bench.stdout.contains("\"precision\""))
    }

    /// --integer-only: a quarter (INT8) or a sixth (INT4) of the FP32 file, the same answers as the
    /// full quantized file, served by agentd like any other; --adaptive with it is refused.
    @Test func integerOnlyFilesAreSmallAndAnswerAsTheFullOnes() throws {
        let dir = temporaryDirectory("intonly")
        let fp32Bytes = try #require(try FileManager.default.attributesOfItem(atPath: Self.mlp)[.size] as? Int)
        for (precision, limit) in [("int8", 0.3), ("int4", 0.2)] {
            let full = dir + "/\(precision).safetensors", slim = dir + "/\(precision)-io.safetensors"
            #expect(try Agentctl.run(["model", "quantize", Self.mlp, full, "--calib", Agentctl.digits, "--precision", precision]).status == 0)
            let q = try Agentctl.run(["model", "quantize", Self.mlp, slim, "--calib", Agentctl.digits, "--precision", precision, "--integer-only"])
            try #require(q.status == 0, "\(q.stderr)")
            let bytes = try #require(try FileManager.default.attributesOfItem(atPath: slim)[.size] as? Int)
            #expect(Double(bytes) < limit * Double(fp32Bytes), "\(precision): \(bytes) of \(fp32Bytes) bytes")
            let a = try Agentctl.run(["model", "eval", full, "--data", Agentctl.digits, "--test-split", "--json"])
            let b = try Agentctl.run(["model", "eval", slim, "--data", Agentctl.digits, "--test-split", "--json"])
            #expect(try json(a.stdout)["accuracy"] as? Double == json(b.stdout)["accuracy"] as? Double)
            #expect(try json(a.stdout)["confusion"] as? [[Int]] == json(b.stdout)["confusion"] as? [[Int]])
        }
        let agent = try AgentdProcess(model: dir + "/int8-io.safetensors")
        try #require(agent.waitForNotification("READY=1") != nil, "no READY=1; log:\n\(agent.log)")
        let status = try json(try agent.agentctl(["status", "--json"]).stdout)
        #expect((status["model"] as? [String: Any])?["precision"] as? String == "int8")
        let refused = try Agentctl.run(["model", "quantize", Self.mlp, dir + "/x.safetensors", "--calib", Agentctl.digits, "--integer-only", "--adaptive"])
        #expect(refused.status != 0 && refused.stderr.contains("cannot be used with --adaptive"))
        #expect(!FileManager.default.fileExists(atPath: dir + "/x.safetensors"))
    }

    /// `train --qat int8` writes the ranges it learned and `quantize` takes them over calibration:
    /// each INT8 layer's input scale in the report is the one of the learned range, read here from
    /// the file's own manifest, and the command says how many ranges it took.
    @Test func quantizeUsesTheRangesQuantizationAwareTrainingLearned() throws {
        let dir = temporaryDirectory("qat8")
        let qat = dir + "/qat.safetensors", out = dir + "/q.safetensors"
        let t = try Agentctl.run(["model", "train", "--data", Agentctl.digits, "--from", Self.mlp, "--qat", "int8", "--epochs", "1",
                                  "--out", qat])
        try #require(t.status == 0, "\(t.stderr)")
        let manifest = try SafetensorsFile(qat).manifest
        let ranges = try #require((manifest["qat"] as? [String: Any])?["activations"] as? [String: [Double]])
        #expect(ranges.count >= 3, "\(ranges)")  // the input and both hidden ReLUs
        let text = try Agentctl.run(["model", "quantize", qat, out, "--calib", Agentctl.digits])
        #expect(text.status == 0, "\(text.stderr)")
        #expect(text.stderr.contains("activation ranges: \(ranges.count) tensors from quantization-aware training"), "\(text.stderr)")
        let r = try Agentctl.run(["model", "quantize", qat, out, "--calib", Agentctl.digits, "--json"])
        let layers = try #require(try json(r.stdout)["layers"] as? [[String: Any]])
        for layer in layers {
            let l = try #require(layer["layer"] as? Int), scale = try #require(layer["inputScale"] as? Double)
            let range = try #require(ranges[String(l)], "no learned range for layer \(l)'s input")
            // QuantParams(lo:hi:): the range widened to hold 0, 255 steps.
            let expected = Float(max(range[1], 0) - min(range[0], 0)) / 255
            #expect(abs(Float(scale) - expected) <= expected * 1e-6, "layer \(l): input scale \(scale), learned range gives \(expected)")
        }
        // Without the section (the FP32 source), the same layers are calibrated: other scales.
        let plain = try json(try Agentctl.run(["model", "quantize", Self.mlp, dir + "/p.safetensors", "--calib", Agentctl.digits,
                                               "--json"]).stdout)
        let plainScales = (plain["layers"] as? [[String: Any]])?.compactMap { $0["inputScale"] as? Double }
        #expect(plainScales != layers.compactMap { $0["inputScale"] as? Double })
    }

    /// --reduce-range: the report says 7-bit weights, accuracy stays within budget, the manifest
    /// records it, and `bench` names the kernel the plan runs (vpmaddubsw on an AVX2 CPU).
    @Test func reduceRangeWritesSevenBitWeightsAndBenchNamesTheirKernel() throws {
        let out = temporaryDirectory("q7") + "/q7.safetensors"
        let r = try Agentctl.run(["model", "quantize", Self.mlp, out, "--calib", Agentctl.digits, "--reduce-range", "--json"])
        try #require(r.status == 0, "\(r.stderr)")
        let report = try json(r.stdout)
        #expect(report["int8WeightBits"] as? Int == 7)
        let fp32 = try #require(report["fp32Accuracy"] as? Double), q = try #require(report["quantizedAccuracy"] as? Double)
        #expect((fp32 - q) * 100 <= 0.5, "\(fp32) -> \(q)")
        let text = try Agentctl.run(["model", "quantize", Self.mlp, out, "--calib", Agentctl.digits, "--reduce-range"])
        #expect(text.stdout.contains("INT8 weights in 7 bits"))
        // An MLP in INT4 has no INT8 layer: nothing is 7-bit, and neither report nor file says so.
        let int4 = temporaryDirectory("q4r") + "/q4.safetensors"
        let r4 = try Agentctl.run(["model", "quantize", Self.mlp, int4, "--calib", Agentctl.digits, "--precision", "int4", "--reduce-range",
                                   "--json"])
        #expect(try json(r4.stdout)["int8WeightBits"] as? Int == 8)
        #expect((try SafetensorsFile(int4).manifest["quantization"] as? [String: Any])?["reduce_range"] == nil)
        #expect(try Self.sevenBitCodes(out) == 64 * 256 + 256 * 256 + 256 * 10)
        // On any AVX2 CPU (a VNNI one too, forced to its AVX2 path) the 7-bit file runs vpmaddubsw and
        // the same model quantized to 8 bits the int16 kernel.
        let flags = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        guard flags.contains(" avx2 ") && flags.contains(" fma ") else { return }
        let eightBit = temporaryDirectory("q8") + "/q8.safetensors"
        #expect(try Agentctl.run(["model", "quantize", Self.mlp, eightBit, "--calib", Agentctl.digits]).status == 0)
        func kernel(_ file: String) throws -> String? {
            let r = try Agentctl.run(["model", "bench", file, "--batch", "4", "--seconds", "0.05", "--json"], environment: ["EDGE_ISA": "avx2"])
            return try json(r.stdout)["int8_kernel"] as? String
        }
        #expect(try kernel(out)?.contains("vpmaddubsw") == true)
        #expect(try kernel(eightBit) == "avx2 vpmaddwd")
    }

    /// The file's INT8 codes, each checked to lie within ±63, after `reduce_range` in its manifest.
    static func sevenBitCodes(_ path: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> Int {
        let file = try SafetensorsFile(path)
        #expect((try file.manifest["quantization"] as? [String: Any])?["reduce_range"] as? Bool == true, sourceLocation: sourceLocation)
        var codes = 0
        for name in file.header.keys where name.hasSuffix(".q8") {
            let data = try file.tensor(name)
            #expect(data.allSatisfy { abs(Int(Int8(bitPattern: $0))) <= 63 }, "\(name)", sourceLocation: sourceLocation)
            codes += data.count
        }
        return codes
    }

    /// `model.reduce_range = true`: agentd's own first-start quantization writes 7-bit weights.
    @Test func agentdQuantizesWithSevenBitWeightsWhenConfigured() throws {
        let agent = try AgentdProcess(config: "reduce_range = true")
        try #require(agent.waitForNotification("READY=1") != nil, "no READY=1; log:\n\(agent.log)")
        let models = agent.dir + "/state/models/"
        let stored = try FileManager.default.contentsOfDirectory(atPath: models).filter { $0.hasSuffix(".safetensors") }
        try #require(stored.count == 1, "\(stored)")
        #expect(try Self.sevenBitCodes(models + stored[0]) == 64 * 64 + 64 * 10)
        let eval = try json(try Agentctl.run(["model", "eval", models + stored[0], "--data", Agentctl.digits, "--json"]).stdout)
        #expect(eval["precision"] as? String == "int8" && eval["accuracy"] as? Double ?? 0 > 0.9, "\(eval)")
        let infer = try json(try agent.agentctl(["infer", "--input", Agentctl.digits, "--json"]).stdout)
        #expect((infer["results"] as? [Any])?.count == 1797)
    }

    @Test func int8OnAnFP32FileIsRefused() throws {
        let r = try Agentctl.run(["model", "eval", Self.mlp, "--data", Agentctl.digits, "--precision", "int8"])
        #expect(r.status == 1 && r.stderrLines.count == 1)
        #expect(r.stderr.contains("has no quantization section"))
    }

    func expectRefused(_ csv: String, _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let dir = temporaryDirectory("qbad")
        let out = dir + "/q.safetensors"
        let r = try Agentctl.run(["model", "quantize", Self.mlp, out, "--calib", csv])
        #expect(r.status == 1, sourceLocation: sourceLocation)
        #expect(r.stderrLines.count == 1, "\(r.stderr)", sourceLocation: sourceLocation)
        #expect(r.stderr.contains(fragment), "\(r.stderr)", sourceLocation: sourceLocation)
        #expect(!FileManager.default.fileExists(atPath: out), "a failed quantize wrote its output", sourceLocation: sourceLocation)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty, "left a temporary file", sourceLocation: sourceLocation)
    }

    @Test func calibrationWithTheWrongFeatureCount() throws {
        let csv = temporaryDirectory("csv") + "/c.csv"
        try ("a,b,label\n" + String(repeating: "1,2,0\n", count: 50)).write(toFile: csv, atomically: true, encoding: .utf8)
        try expectRefused(csv, "has 2 feature columns but the model takes 64")
    }

    @Test func tooFewCalibrationRows() throws {
        let csv = temporaryDirectory("csv") + "/c.csv"
        let header = (0..<64).map { "p\($0)" }.joined(separator: ",") + ",label\n"
        let row = (0..<64).map { _ in "1" }.joined(separator: ",") + ",3\n"
        try (header + String(repeating: row, count: 30)).write(toFile: csv, atomically: true, encoding: .utf8)
        try expectRefused(csv, "at least 32 are needed")
    }

    @Test(arguments: ["nan", "inf", "-inf"])
    func nonFiniteCalibrationValues(_ bad: String) throws {
        let csv = temporaryDirectory("csv") + "/c.csv"
        let header = (0..<64).map { "p\($0)" }.joined(separator: ",") + ",label\n"
        let row = (0..<64).map { _ in "1" }.joined(separator: ",") + ",3\n"
        let badRow = ([bad] + (1..<64).map { _ in "1" }).joined(separator: ",") + ",3\n"
        try (header + String(repeating: row, count: 40) + badRow).write(toFile: csv, atomically: true, encoding: .utf8)
        try expectRefused(csv, ":42: column 1 ('p0'): \(bad) is not finite")
    }
}
