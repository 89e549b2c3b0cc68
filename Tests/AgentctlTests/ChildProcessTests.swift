import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The helpers that start and wait for the tests' child processes.
@Suite struct ChildProcessTests {
    /// Foundation sees a child exit when the last holder of a descriptor it gave that child closes
    /// it; a broker that inherited such a descriptor made another test's wait last as long as the
    /// broker. A pipe (not close-on-exec, like Foundation's socket pairs) must reach end-of-file
    /// once this process closes its write end, whatever Broker.spawn started in between.
    @Test func aSpawnedBrokerHoldsNoDescriptorOfTheTestProcess() throws {
        var fds: [Int32] = [0, 0]
        try #require(pipe(&fds) == 0)
        let pid = try Broker.spawn(["/bin/sleep", "30"])
        defer {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
        close(fds[1])
        _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
        var byte: UInt8 = 0
        let n = read(fds[0], &byte, 1)
        #expect(n == 0, "the spawned child still holds the pipe's write end (read: \(n), errno \(errno))")
        close(fds[0])
    }

    @Test func aChildThatDoesNotExitIsKilledAndNamed() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sleep")
        p.arguments = ["30"]
        let began = Date()
        #expect(throws: ChildTimedOut.self) { try p.runToExit(seconds: 1) }
        #expect(Date().timeIntervalSince(began) < 15)
        try #require(!p.isRunning)
        #expect(p.terminationReason == .uncaughtSignal)
    }
}
