import ArgumentParser
import Foundation
import Tensor
import Inference

@main
struct Agentctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agentctl",
        abstract: "Control edge-agent: work on model files, query the agentd daemon.",
        discussion: """
            Model files are safetensors files with an edge.manifest (see README, "Model file").
            Every command prints a readable summary; add --json for output a script can parse.
            Errors are one line on stderr and a non-zero exit status.
            """,
        version: agentVersion,
        subcommands: [Status.self, Infer.self, Feedback.self, Models.self, Events.self, DriftCommand.self, LearnCommand.self, ReplayCommand.self, MetricsCommand.self, ConfigCommand.self,
                      ModelCommand.self, KeysCommand.self, FleetCommand.self, BenchLoad.self, Version.self]
    )
}

let agentVersion = "0.1.0"

struct ModelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "model",
        abstract: "Train, import (ONNX), evaluate, inspect, quantize, run and benchmark model files offline; roll agentd back.",
        subcommands: [Train.self, Import.self, Prune.self, Distill.self, Eval.self, Inspect.self, Predict.self, Bench.self, Quantize.self, Prepare.self, DriftEval.self, LearnEval.self, Rollback.self]
    )
}

/// Runs a command body; any error becomes one line on stderr and exit status 1.
func reportingErrors(_ body: () throws -> Void) throws {
    BLAS.useSingleThread()
    do {
        try body()
    } catch let error as ExitCode {
        throw error
    } catch {
        FileHandle.standardError.write(Data("agentctl: \(error)\n".utf8))
        throw ExitCode(1)
    }
}

/// Writes a Codable value as one line of JSON on stdout.
func printJSON<T: Encodable>(_ value: T, pretty: Bool = true) {
    let encoder = JSONEncoder()
    encoder.outputFormatting = pretty ? [.sortedKeys, .prettyPrinted] : [.sortedKeys]
    encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
    let data = try! encoder.encode(value)
    print(String(decoding: data, as: UTF8.self))
}

func printError(_ line: String, terminator: String = "\n") {
    FileHandle.standardError.write(Data((line + terminator).utf8))
}

/// A plain-text table with columns padded to their widest cell.
func table(_ header: [String], _ rows: [[String]], rightAligned: Set<Int> = []) -> String {
    let all = [header] + rows
    let widths = (0..<header.count).map { c in all.map { $0[c].count }.max() ?? 0 }
    return all.map { row in
        row.enumerated().map { c, cell in
            let pad = String(repeating: " ", count: widths[c] - cell.count)
            return rightAligned.contains(c) ? pad + cell : cell + pad
        }.joined(separator: "  ").replacingOccurrences(of: "\\s+$", with: "", options: .regularExpression)
    }.joined(separator: "\n")
}

func percent(_ x: Float) -> String { String(format: "%.2f%%", Double(x) * 100) }

/// The median time of one `plan.run` over `input` (warmed up first), in microseconds: calls for
/// `seconds`, at least `minimumCalls`, at most a million.
func medianLatency(_ plan: InferencePlan, input: [Float], batch: Int, seconds: Double, warmUp: Int,
                   minimumCalls: Int) -> (microseconds: Double, calls: Int) {
    input.withUnsafeBufferPointer { buf in
        let p = buf.baseAddress!
        for _ in 0..<warmUp { plan.run(p, batch: batch) }
        var samples: [UInt64] = []
        samples.reserveCapacity(4096)
        let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
        while samples.count < minimumCalls || (monotonicNanoseconds() < deadline && samples.count < 1_000_000) {
            let t0 = monotonicNanoseconds()
            plan.run(p, batch: batch)
            samples.append(monotonicNanoseconds() - t0)
        }
        samples.sort()
        return (Double(samples[samples.count / 2]) / 1000, samples.count)
    }
}

/// Monotonic time in nanoseconds.
func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
