import Foundation
import Testing

/// Whole-process tests of `agentctl model`: the real binary, real files, exit codes and output.
@Suite(.serialized) struct ModelCommandTests {
    /// Trained once and shared: an MLP on digits with the documented split and seed.
    static let trained: (dir: String, mlp: String) = {
        let dir = temporaryDirectory("trained")
        let mlp = dir + "/mlp.safetensors"
        let r = try! Agentctl.run(["model", "train", "--data", Agentctl.digits, "--arch", "mlp:64-256-256-10",
                                   "--epochs", "30", "--seed", "1", "--out", mlp, "--json"])
        precondition(r.status == 0, "training failed: \(r.stderr)")
        return (dir, mlp)
    }()

    func json(_ line: Substring) throws -> [String: Any] {
        try #require(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
    }

    /// inspect's model memory (the figure agentd's status reports) against the growth of the
    /// resident set of a process that loads the model as agentd does and runs its plans: FP32,
    /// INT8 with its FP32 fallback, INT4, and an integer-only INT8 file.
    @Test func modelMemoryMatchesTheMeasuredGrowth() throws {
        let dir = temporaryDirectory("memory")
        let fp32 = dir + "/wide.safetensors", int8 = dir + "/wide-int8.safetensors", int4 = dir + "/wide-int4.safetensors"
        let r = try Agentctl.run(["model", "train", "--data", Agentctl.digits, "--arch", "mlp:64-768-768-10", "--epochs", "1", "--out", fp32])
        try #require(r.status == 0, "\(r.stderr)")
        #expect(try Agentctl.run(["model", "quantize", fp32, int8, "--calib", Agentctl.digits, "--adaptive"]).status == 0)
        #expect(try Agentctl.run(["model", "quantize", fp32, int4, "--calib", Agentctl.digits, "--precision", "int4"]).status == 0)
        // Integer-only: the FP32 weights are rebuilt at load, beside the file, and counted.
        let slim = dir + "/wide-int8-io.safetensors"
        #expect(try Agentctl.run(["model", "quantize", fp32, slim, "--calib", Agentctl.digits, "--integer-only"]).status == 0)
        for file in [fp32, int8, int4, slim] {
            let m = try Agentctl.run(["model", "inspect", file, "--measure", "--workers", "2", "--json"])
            try #require(m.status == 0, "\(m.stderr)")
            let out = try json(Substring(m.stdout))
            let estimate = try #require(out["modelMemoryBytes"] as? Int), measured = try #require(out["measuredBytes"] as? Int)
            #expect(abs(Double(estimate) / Double(measured) - 1) <= 0.10, "\(file): estimate \(estimate), measured \(measured)")
        }
    }

    /// inspect names the steps the plan runs and, quantized, its integer kernels: FP32 dense
    /// layers and the softmax; INT8 (the first layer quantizing its input); INT4, whose second and
    /// third layers run the INT4 kernel this CPU has.
    @Test func inspectNamesThePlansSteps() throws {
        let dir = temporaryDirectory("steps")
        let int8 = dir + "/int8.safetensors", int4 = dir + "/int4.safetensors"
        #expect(try Agentctl.run(["model", "quantize", Self.trained.mlp, int8, "--calib", Agentctl.digits]).status == 0)
        #expect(try Agentctl.run(["model", "quantize", Self.trained.mlp, int4, "--calib", Agentctl.digits, "--precision", "int4"]).status == 0)
        func inspect(_ file: String) throws -> (steps: [String], kernels: [String], text: String) {
            let j = try Agentctl.run(["model", "inspect", file, "--json"]), t = try Agentctl.run(["model", "inspect", file])
            try #require(j.status == 0 && t.status == 0, "\(j.stderr) \(t.stderr)")
            let out = try json(Substring(j.stdout))
            return (try #require(out["steps"] as? [String]), try #require(out["kernels"] as? [String]), t.stdout)
        }
        let fp32 = try inspect(Self.trained.mlp)
        #expect(fp32.steps == ["fp32 dense", "fp32 dense", "fp32 dense", "softmax"] && fp32.kernels.isEmpty, "\(fp32)")
        #expect(fp32.text.contains("plan steps: fp32 dense, fp32 dense, fp32 dense, softmax\n"), "\(fp32.text)")
        let q8 = try inspect(int8)
        #expect(q8.steps.first == "quantize" && q8.steps.filter { $0.hasPrefix("int8 dense") }.count == 3, "\(q8.steps)")
        #expect(q8.kernels.count == 1 && q8.text.contains("; kernels: \(q8.kernels[0])"), "\(q8)")
        let q4 = try inspect(int4)
        // On W4A8 the INT4 layers read their calibrated UINT8 inputs; elsewhere each FP32 row.
        #expect(q4.steps.filter { $0.hasPrefix("int4 dense") }.count == 3 && q4.kernels.last.map { $0.contains("(w4a") || $0.contains("weight-only") } == true, "\(q4)")
        let w4a8 = q4.kernels.last?.contains("w4a8") == true
        #expect(q4.steps.contains("int4 dense (uint8 in, uint8 out)") == w4a8 && q4.steps.contains("int4 dense") == !w4a8, "\(q4.steps)")
    }

    /// inspect's memory options fed hostile values: refused with a line naming the option, nothing printed.
    @Test(arguments: [["--workers", "0"], ["--workers", "257"], ["--workers", "nan"], ["--batch", "-1"], ["--batch", "1e300"],
                      ["--batch", "4097"], ["--batch", "99999999999999999999"]])
    func inspectRefusesHostileMemoryOptions(_ options: [String]) throws {
        let r = try Agentctl.run(["model", "inspect", Self.trained.mlp, "--measure"] + options)
        #expect(r.status == 64 && r.stdout.isEmpty, "\(options): \(r.status) \(r.stdout)")
        #expect(r.stderr.contains(options[0]), "\(r.stderr)")
    }

    @Test func mlpReachesTheAccuracyTheReadmePromises() throws {
        let r = try Agentctl.run(["model", "eval", Self.trained.mlp, "--data", Agentctl.digits, "--test-split", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let out = try json(Substring(r.stdout))
        let accuracy = try #require(out["accuracy"] as? Double)
        #expect(accuracy >= 0.97, "MLP test accuracy \(accuracy)")
        #expect((out["rows"] as? Int) == 359)
        let confusion = try #require(out["confusion"] as? [[Int]])
        #expect(confusion.count == 10 && confusion.allSatisfy { $0.count == 10 })
    }

    @Test func cnnReachesTheAccuracyTheReadmePromises() throws {
        let dir = temporaryDirectory("cnn")
        let cnn = dir + "/cnn.safetensors"
        let r = try Agentctl.run(["model", "train", "--data", Agentctl.digits, "--arch", "cnn:1x8x8-c32-c64-m2-f128-10",
                                  "--epochs", "20", "--seed", "1", "--out", cnn, "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let lines = r.stdout.split(separator: "\n")
        #expect(lines.count == 21, "one JSON line per epoch and a summary")
        let summary = try json(lines.last!)
        let accuracy = try #require(summary["testAccuracy"] as? Double)
        #expect(accuracy >= 0.98, "CNN test accuracy \(accuracy)")
    }

    @Test func trainPrintsOneProgressLinePerEpoch() throws {
        let dir = temporaryDirectory("progress")
        let r = try Agentctl.run(["model", "train", "--data", Agentctl.digits, "--arch", "mlp:64-16-10", "--epochs", "3",
                                  "--out", dir + "/m.safetensors"])
        #expect(r.status == 0)
        let epochs = r.stderrLines.filter { $0.hasPrefix("epoch") }
        #expect(epochs.count == 3)
        #expect(epochs.allSatisfy { $0.contains("loss") && $0.contains("train") && $0.contains("test") && $0.hasSuffix(" s") })
        #expect(r.stdout.contains("wrote \(dir)/m.safetensors"))
    }

    /// The README's pruning target on digits: 30% of the parameters or fewer, within 1 point, a
    /// genuinely smaller file; every round reported; bad options refused with one line.
    @Test func structuredPruningMakesASmallerModelWithinOnePoint() throws {
        let dir = temporaryDirectory("prune")
        let pruned = dir + "/pruned.safetensors"
        let r = try Agentctl.run(["model", "prune", Self.trained.mlp, "--data", Agentctl.digits, "--out", pruned, "--sparsity", "0.72",
                                  "--structured", "--rounds", "4", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let rows = try r.stdout.split(separator: "\n").map { try json($0) }
        #expect(rows.map { $0["round"] as? Int } == [0, 1, 2, 3, 4])
        let first = try #require(rows.first), last = try #require(rows.last)
        let share = try #require(last["parametersShare"] as? Double)
        #expect(share <= 0.30, "parameters left \(share)")
        let drop = try #require(first["accuracy"] as? Double) - (try #require(last["accuracy"] as? Double))
        #expect(drop <= 0.01, "accuracy drop \(drop)")
        #expect((last["widths"] as? [Int])?.last == 10)
        let inspect = try json(Substring(try Agentctl.run(["model", "inspect", pruned, "--json"]).stdout))
        #expect((inspect["parameters"] as? Int) == (last["parameters"] as? Int))
        let before = try #require(try FileManager.default.attributesOfItem(atPath: Self.trained.mlp)[.size] as? Int)
        let after = try #require(try FileManager.default.attributesOfItem(atPath: pruned)[.size] as? Int)
        #expect(Double(after) < 0.32 * Double(before))
        // Unstructured: as many weights zeroed, the same shapes.
        let sparse = dir + "/sparse.safetensors"
        let u = try Agentctl.run(["model", "prune", Self.trained.mlp, "--data", Agentctl.digits, "--out", sparse, "--sparsity", "0.5",
                                  "--rounds", "2", "--epochs", "1", "--json"])
        #expect(u.status == 0, "\(u.stderr)")
        let uLast = try json(try #require(u.stdout.split(separator: "\n").last))
        #expect((uLast["widths"] as? [Int]) == [256, 256, 10])
        #expect(abs(try #require(uLast["parametersShare"] as? Double) - 0.5) < 0.02)
        for bad in [["--sparsity", "1.5"], ["--sparsity", "0.5", "--rounds", "0"], ["--sparsity", "0.5", "--importance", "magic"],
                    ["--sparsity", "nan"], ["--sparsity", "-0.5"], ["--sparsity", "0.5", "--lr", "inf"], ["--sparsity", "0.5", "--lr", "1e300"],
                    ["--sparsity", "0.5", "--multiple", "-8"], ["--sparsity", "0.5", "--epochs", "99999999999"]] {
            let b = try Agentctl.run(["model", "prune", Self.trained.mlp, "--data", Agentctl.digits, "--out", dir + "/x.safetensors", "--structured"] + bad)
            #expect(b.status != 0 && !FileManager.default.fileExists(atPath: dir + "/x.safetensors"), "\(bad)")
        }
        let single = dir + "/single.safetensors"
        #expect(try Agentctl.run(["model", "train", "--data", Agentctl.digits, "--arch", "mlp:64-10", "--epochs", "1", "--out", single]).status == 0)
        let none = try Agentctl.run(["model", "prune", single, "--data", Agentctl.digits, "--out", dir + "/x.safetensors", "--sparsity", "0.5", "--structured"])
        #expect(none.status == 1 && none.stderrLines.count == 1 && none.stderr.contains("no layer can be pruned"))
    }

    @Test func distillWritesAStudentAndComparesItWithLabelsAlone() throws {
        let dir = temporaryDirectory("distill")
        let student = dir + "/student.safetensors"
        let r = try Agentctl.run(["model", "distill", "--teacher", Self.trained.mlp, "--arch", "mlp:64-32-10", "--data", Agentctl.digits,
                                  "--out", student, "--epochs", "8", "--compare", "--seeds", "2", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let out = try json(Substring(r.stdout))
        #expect((out["studentParameters"] as? Int) == 64 * 32 + 32 + 32 * 10 + 10)
        #expect((out["perSeed"] as? [[String: Any]])?.count == 2)
        #expect(try #require(out["studentAccuracy"] as? Double) > 0.85)
        #expect(out["labelsOnlyAccuracy"] is Double)
        let inspect = try json(Substring(try Agentctl.run(["model", "inspect", student, "--json"]).stdout))
        #expect((inspect["labels"] as? [String])?.count == 10)
        // A student started from a file must answer the teacher's classes on the teacher's input.
        let cnn = dir + "/cnn.safetensors"
        #expect(try Agentctl.run(["model", "train", "--data", Agentctl.digits, "--arch", "cnn:1x8x8-c4-10", "--epochs", "1", "--out", cnn]).status == 0)
        for (bad, message) in [(["--arch", "mlp:64-32-10", "--alpha", "2"], "--alpha"), (["--arch", "mlp:64-32-10", "--alpha", "nan"], "--alpha"),
                               (["--arch", "mlp:64-32-10", "--temperature", "inf"], "--temperature"),
                               (["--arch", "mlp:64-32-10", "--lr", "-1"], "--lr"), (["--arch", "mlp:64-32-10", "--mixup", "1000000"], "--mixup"), (["--arch", "mlp:30-10"], "takes 30 inputs"),
                               (["--arch", "mlp:64-32-10", "--seeds", "3"], "--seeds needs --compare"),
                               (["--from", cnn], "the student must answer the teacher's classes"),
                               (["--arch", "mlp:64-32-10", "--from", cnn], "one of them")] {
            let b = try Agentctl.run(["model", "distill", "--teacher", Self.trained.mlp, "--data", Agentctl.digits, "--out", dir + "/x.safetensors"] + bad)
            #expect(b.status != 0 && b.stderr.contains(message) && !FileManager.default.fileExists(atPath: dir + "/x.safetensors"), "\(bad): \(b.stderr)")
        }
    }

    @Test func fineTuningKeepsFrozenTensorsAndBumpsTheVersion() throws {
        let dir = temporaryDirectory("tune")
        let tuned = dir + "/tuned.safetensors"
        let r = try Agentctl.run(["model", "train", "--data", Agentctl.digits, "--from", Self.trained.mlp, "--trainable",
                                  "fc3.weight,fc3.bias", "--epochs", "1", "--out", tuned])
        #expect(r.status == 0, "\(r.stderr)")
        let inspect = try Agentctl.run(["model", "inspect", tuned, "--json"])
        let out = try json(Substring(inspect.stdout))
        #expect((out["version"] as? Int) == 2)
        #expect((out["trainable"] as? [String]) == ["fc3.bias", "fc3.weight"])
        let bad = try Agentctl.run(["model", "train", "--data", Agentctl.digits, "--from", Self.trained.mlp, "--trainable",
                                    "fc9.weight", "--out", dir + "/x.safetensors"])
        #expect(bad.status != 0)
        #expect(bad.stderrLines.count == 1 && bad.stderr.contains("'fc9.weight' is not a tensor of the model"))
    }

    @Test func inspectShowsLayersParametersAndFlops() throws {
        let r = try Agentctl.run(["model", "inspect", Self.trained.mlp, "--json"])
        #expect(r.status == 0)
        let out = try json(Substring(r.stdout))
        #expect((out["parameters"] as? Int) == 85002)
        #expect((out["flopsPerSample"] as? Int) == 2 * (64 * 256 + 256 * 256 + 256 * 10) + (256 + 256 + 10) + 256 + 256 + 30)
        let layers = try #require(out["layers"] as? [[String: Any]])
        #expect(layers.map { $0["op"] as? String } == ["dense", "relu", "dense", "relu", "dense", "softmax"])
        let text = try Agentctl.run(["model", "inspect", Self.trained.mlp])
        #expect(text.stdout.contains("85002 parameters"))
    }

    @Test func predictGivesClassAndScoresPerRow() throws {
        let r = try Agentctl.run(["model", "predict", Self.trained.mlp, "--data", Agentctl.digits, "--json"])
        #expect(r.status == 0)
        let rows = r.stdout.split(separator: "\n")
        #expect(rows.count == 1797)
        let first = try json(rows[0])
        let scores = try #require(first["scores"] as? [Double])
        #expect(scores.count == 10)
        #expect(abs(scores.reduce(0, +) - 1) < 1e-4)
        #expect((first["class"] as? Int) == scores.indices.max { scores[$0] < scores[$1] })
    }

    @Test func benchReportsEachBatchSize() throws {
        let r = try Agentctl.run(["model", "bench", Self.trained.mlp, "--batch", "1,8", "--seconds", "0.1", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let rows = try r.stdout.split(separator: "\n").map(json)
        #expect(rows.map { $0["batch"] as? Int } == [1, 8])
        for row in rows {
            let latency = try #require(row["latency_us"] as? Double)
            let throughput = try #require(row["samples_per_s"] as? Double)
            #expect(latency > 0 && throughput > 0)
        }
    }

    /// EDGE_ISA forces a kernel path; bench names the INT8 kernel that ran, as it is. An ISA the
    /// CPU cannot run (or an unknown name) leaves the best one.
    @Test func edgeIsaForcesAKernelPathAndBenchNamesIt() throws {
        func kernel(_ isa: String?) throws -> (String?, String?) {
            let r = try Agentctl.run(["model", "bench", Self.trained.mlp, "--batch", "1", "--seconds", "0.02", "--json"],
                                     environment: isa.map { ["EDGE_ISA": $0] } ?? [:])
            #expect(r.status == 0, "\(r.stderr)")
            let row = try json(r.stdout.split(separator: "\n")[0])
            return (row["isa"] as? String, row["int8_kernel"] as? String)
        }
        #expect(try kernel("portable") == ("portable", "portable c"))
        let best = try kernel(nil)
        #expect(try kernel("no-such-isa") == best)
        let flags = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        if flags.contains(" avx2 ") && flags.contains(" fma ") {
            #expect(try kernel("avx2") == ("avx2", "avx2 vpmaddwd"))
        }
    }

    /// `prepare` is seeded: two runs write the same bytes. (Its replay seed once took each class's
    /// shuffle in a Dictionary's key order, which changes from process to process, so every run
    /// kept other rows and the learner's gate judged on other old rows.)
    @Test func prepareWritesTheSameBytesEveryRun() throws {
        let dir = temporaryDirectory("prepare-twice")
        for i in 1...2 {
            let r = try Agentctl.run(["model", "prepare", Self.trained.mlp, "--data", Agentctl.digits, "--out", dir + "/p\(i).safetensors"])
            #expect(r.status == 0, "\(r.stderr)")
        }
        let a = FileManager.default.contents(atPath: dir + "/p1.safetensors"), b = FileManager.default.contents(atPath: dir + "/p2.safetensors")
        #expect(a != nil && a == b, "two prepare runs wrote different files")
    }

    @Test func helpTeachesTheArchGrammar() throws {
        let r = try Agentctl.run(["model", "train", "--help"])
        #expect(r.status == 0)
        #expect(r.stdout.contains("cN[kK][sS][pP]"))
        #expect(r.stdout.contains("Every 5th row"))
    }
}

/// Bad input: each command exits non-zero with one line that says what and where.
@Suite struct BadInputTests {
    static let commands: [[String]] = [
        ["model", "eval", "FILE", "--data", "CSV"],
        ["model", "inspect", "FILE"],
        ["model", "predict", "FILE", "--data", "CSV"],
        ["model", "bench", "FILE", "--batch", "1", "--seconds", "0.01"],
        ["model", "train", "--data", "CSV", "--from", "FILE", "--epochs", "1", "--out", "OUT"],
    ]

    func expectOneLineError(_ command: [String], file: String, csv: String = Agentctl.digits, contains fragment: String,
                            sourceLocation: SourceLocation = #_sourceLocation) throws {
        let dir = temporaryDirectory("bad")
        let args = command.map { $0 == "FILE" ? file : $0 == "CSV" ? csv : $0 == "OUT" ? dir + "/out.safetensors" : $0 }
        let r = try Agentctl.run(args)
        #expect(r.status == 1, "\(args): status \(r.status)", sourceLocation: sourceLocation)
        #expect(r.stderrLines.count == 1, "\(args): \(r.stderr)", sourceLocation: sourceLocation)
        #expect(r.stderr.hasPrefix("agentctl: "), "\(r.stderr)", sourceLocation: sourceLocation)
        #expect(r.stderr.contains(fragment), "\(args): \(r.stderr)", sourceLocation: sourceLocation)
        #expect(!FileManager.default.fileExists(atPath: dir + "/out.safetensors"), sourceLocation: sourceLocation)
    }

    static func goodModel() throws -> String {
        let dir = temporaryDirectory("good")
        let path = dir + "/m.safetensors"
        let r = try Agentctl.run(["model", "train", "--data", Agentctl.digits, "--arch", "mlp:64-8-10", "--epochs", "1", "--out", path])
        precondition(r.status == 0, r.stderr)
        return path
    }

    @Test(arguments: commands)
    func missingFile(_ command: [String]) throws {
        try expectOneLineError(command, file: "/nonexistent/model.safetensors", contains: "/nonexistent/model.safetensors: no such file")
    }

    @Test(arguments: commands)
    func notAModelFile(_ command: [String]) throws {
        try expectOneLineError(command, file: Agentctl.digits, contains: "\(Agentctl.digits): header length")
    }

    @Test(arguments: commands)
    func truncatedModel(_ command: [String]) throws {
        let good = try Self.goodModel()
        let bytes = try Data(contentsOf: URL(fileURLWithPath: good))
        let cut = good + ".cut"
        try bytes.prefix(bytes.count - 100).write(to: URL(fileURLWithPath: cut))
        try expectOneLineError(command, file: cut, contains: "truncated")
    }

    @Test(arguments: commands)
    func tamperedModel(_ command: [String]) throws {
        let good = try Self.goodModel()
        var text = try Data(contentsOf: URL(fileURLWithPath: good))
        // Change fc1.weight's declared shape [8,64] to [8,63]: the byte range no longer matches.
        let needle = Data("\"shape\":[8,64]".utf8)
        let range = try #require(text.range(of: needle))
        text.replaceSubrange(range, with: Data("\"shape\":[8,63]".utf8))
        let tampered = good + ".tampered"
        try text.write(to: URL(fileURLWithPath: tampered))
        try expectOneLineError(command, file: tampered, contains: "tensor 'fc1.weight': data_offsets")
    }

    @Test(arguments: commands.filter { $0.contains("CSV") })
    func csvWithWrongFeatureCount(_ command: [String]) throws {
        let dir = temporaryDirectory("csv")
        let csv = dir + "/short.csv"
        try "a,b,c,label\n1,2,3,0\n".write(toFile: csv, atomically: true, encoding: .utf8)
        try expectOneLineError(command, file: try Self.goodModel(), csv: csv, contains: "\(csv):1: has 3 feature columns but the model takes 64")
    }

    @Test(arguments: ["mlp:64-x-10", "cnn:1x8x8-q3-10", "mlp:32-10", "lstm:4"])
    func archThatCannotBeParsed(_ arch: String) throws {
        let dir = temporaryDirectory("arch")
        let r = try Agentctl.run(["model", "train", "--data", Agentctl.digits, "--arch", arch, "--out", dir + "/m.safetensors"])
        #expect(r.status == 1)
        #expect(r.stderrLines.count == 1)
        #expect(r.stderr.hasPrefix("agentctl: arch '\(arch)': "), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/m.safetensors"))
    }

    @Test func directoryInsteadOfFile() throws {
        try expectOneLineError(["model", "inspect", "FILE"], file: "/tmp", contains: "/tmp: is a directory")
    }
}
