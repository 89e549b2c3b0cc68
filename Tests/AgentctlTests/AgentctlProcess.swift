import Foundation
import Testing

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
        try process.runToExit()
        try out.close()
        try err.close()
        return Result(status: process.terminationStatus,
                      stdout: (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "",
                      stderr: (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "")
    }
}

/// A child that has not exited after this long is killed and its test fails: a hang in one test
/// must end as a failure with a name, not as a CI run that never finishes.
let childTimeLimit: Double = 900

struct ChildTimedOut: Error, CustomStringConvertible {
    var command: String
    var description: String { "\(command) did not exit within \(Int(childTimeLimit)) s; killed" }
}

extension Process {
    /// `run()`, then waits for the exit through the termination handler, at most `seconds`; a child
    /// still running then is killed with its process group. Give it files, not pipes, for its
    /// output: a pipe read to its end waits for every holder of the write end, which no time limit
    /// here bounds.
    func runToExit(seconds: Double = childTimeLimit) throws {
        let exited = DispatchSemaphore(value: 0)
        terminationHandler = { _ in exited.signal() }
        try run()
        if exited.wait(timeout: .now() + seconds) == .timedOut {
            kill(-processIdentifier, SIGKILL)
            kill(processIdentifier, SIGKILL)
            _ = exited.wait(timeout: .now() + 10)
            throw ChildTimedOut(command: ([executableURL?.path ?? "?"] + (arguments ?? [])).joined(separator: " "))
        }
    }

    /// SIGTERM, up to `seconds` for the exit, then SIGKILL (a deinit must never wait forever).
    func terminateBounded(seconds: Double = 30) {
        guard isRunning else { return }
        terminate()
        let until = Date(timeIntervalSinceNow: seconds)
        while isRunning && Date() < until { usleep(20_000) }
        if isRunning { kill(processIdentifier, SIGKILL) }
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

/// A model file as the tests read it: the safetensors header (tensor entries by name), the
/// manifest from its metadata ("edge.manifest"), and each tensor's raw bytes.
struct SafetensorsFile {
    let bytes: Data
    let header: [String: Any]
    let dataStart: Int

    init(_ path: String) throws {
        bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        let length = bytes.prefix(8).enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        header = try #require(try JSONSerialization.jsonObject(with: bytes.subdata(in: 8..<(8 + length))) as? [String: Any])
        dataStart = 8 + length
    }

    var manifest: [String: Any] {
        get throws {
            let text = try #require((header["__metadata__"] as? [String: Any])?["edge.manifest"] as? String)
            return try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        }
    }

    func tensor(_ name: String) throws -> Data {
        let offsets = try #require((header[name] as? [String: Any])?["data_offsets"] as? [Int], "no tensor \(name)")
        return bytes.subdata(in: (dataStart + offsets[0])..<(dataStart + offsets[1]))
    }
}
