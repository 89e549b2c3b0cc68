import Foundation

/// Runs the built `agentctl` as a user would: a separate process, arguments, exit status, output.
struct Agentctl {
    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
        var stderrLines: [Substring] { stderr.split(separator: "\n") }
    }

    static let path: String = {
        if let explicit = ProcessInfo.processInfo.environment["AGENTCTL"] { return explicit }
        // swift test runs the test bundle from the build directory that also holds agentctl.
        let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        return dir.appendingPathComponent("agentctl").path
    }()

    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../..").standardized.path
    static let digits = repoRoot + "/tools/data/digits.csv"

    /// Output goes to files, not pipes, so a chatty child can never block on a full pipe.
    /// `environment`: variables set for the child on top of this process's.
    static func run(_ arguments: [String], environment: [String: String] = [:]) throws -> Result {
        let dir = temporaryDirectory("run")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let outPath = dir + "/stdout", errPath = dir + "/stderr"
        _ = FileManager.default.createFile(atPath: outPath, contents: nil)
        _ = FileManager.default.createFile(atPath: errPath, contents: nil)
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
        let err = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        process.standardOutput = out
        process.standardError = err
        try process.run()
        process.waitUntilExit()
        try out.close()
        try err.close()
        return Result(status: process.terminationStatus,
                      stdout: (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "",
                      stderr: (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "")
    }
}

extension Agentctl {
    /// A digits MLP trained (seeded) into a fresh temporary directory: shared models for the daemon tests.
    static func trainedModel(name: String, arch: String, epochs: Int) -> String {
        let path = temporaryDirectory(name) + "/\(name).safetensors"
        let r = try! run(["model", "train", "--data", digits, "--arch", arch, "--epochs", String(epochs), "--seed", "1", "--name", name, "--out", path])
        precondition(r.status == 0, r.stderr)
        return path
    }
}

/// A fresh temporary directory.
func temporaryDirectory(_ name: String) -> String {
    let dir = FileManager.default.temporaryDirectory
        .appendingPathComponent("agentctl-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
    try! FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    return dir.path
}
