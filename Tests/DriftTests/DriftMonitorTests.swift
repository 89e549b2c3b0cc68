import Foundation
import Inference
import ModelFile
import Tensor
import Testing
@testable import Drift

@Suite struct DriftMonitorTests {
    final class Events: @unchecked Sendable {
        let lock = NSLock()
        var list: [DriftEvent] = []
        func add(_ e: DriftEvent) { lock.lock(); list.append(e); lock.unlock() }
        var all: [DriftEvent] { lock.lock(); defer { lock.unlock() }; return list }
    }

    static func directory() -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("drift-monitor-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    /// Feeds rows to the monitor as an inference worker does: plan output, then `observe`.
    static func feed(_ monitor: DriftMonitor, _ net: Network, _ rows: [Float], worker: Int = 0) {
        let plan = ExecutionPlan(network: net, batchCapacity: 32, embedding: monitor.projection)
        rows.withUnsafeBufferPointer { buf in
            var start = 0
            let n = rows.count / 6
            while start < n {
                let b = min(32, n - start)
                let scores = plan.run(buf.baseAddress! + start * 6, batch: b)
                monitor.observe(worker: worker, input: buf.baseAddress! + start * 6, scores: scores.baseAddress!,
                                embeddings: plan.embeddings?.baseAddress, rows: b)
                start += b
            }
        }
    }

    static func settings(_ dir: String, warmup: Int = 200) -> DriftMonitor.Settings {
        var s = DriftMonitor.Settings()
        s.warmupRows = warmup
        s.falseAlarmRun = 200
        s.workers = 2
        s.statePath = dir + "/v3.json"
        s.ringBytes = 16 * (6 + 3 + 4) * 4
        return s
    }

    @Test func warmUpLearnsAReferenceThenDetectsAndSurvivesARestart() async throws {
        let net = Fixture.network(), dir = Self.directory(), events = Events()
        let monitor = DriftMonitor(version: 3, network: net, fileReference: nil, settings: Self.settings(dir)) { events.add($0) }
        #expect(monitor.snapshot().state == .warmingUp)
        Self.feed(monitor, net, Fixture.rows(150, seed: 1))
        #expect(monitor.snapshot().warmupRows == 150)
        Self.feed(monitor, net, Fixture.rows(50, seed: 2), worker: 1)
        // Built off the serving path: wait for it.
        for _ in 0..<6000 where monitor.snapshot().state == .warmingUp { try await Task.sleep(for: .milliseconds(50)) }
        #expect(monitor.snapshot().state != .warmingUp)
        #expect(monitor.snapshot().referenceSource == "warmup")
        #expect(events.all.contains { if case .referenceReady = $0 { true } else { false } })
        // A shifted feature sets off the alarm; the rows are counted by the time a reader asks.
        Self.feed(monitor, net, Fixture.rows(100, seed: 3) + Fixture.rows(300, seed: 4, shift: 3, feature: 1))
        let s = monitor.snapshot()
        #expect(s.samples == 400)
        #expect(s.state == .drift)
        #expect(s.lastAlarm != nil)
        #expect(s.signals.first { $0.name == "input" }?.top.first?.feature == 1)
        #expect(try monitor.save())
        // A restart: same version, same path — reference, windows, alarm and count come back.
        let again = DriftMonitor(version: 3, network: net, fileReference: nil, settings: Self.settings(dir)) { _ in }
        #expect(again.loadProblem == nil)
        let r = again.snapshot()
        #expect(r.state == .drift && r.samples == 400 && r.referenceSource == "warmup")
        #expect(zip(r.signals, s.signals).allSatisfy { abs($0.score - $1.score) < 1e-9 })
        #expect(r.lastAlarm == s.lastAlarm)
        // Reset: a file without a reference warms up again.
        again.reset()
        #expect(again.snapshot().state == .warmingUp)
    }

    @Test func damagedOrHostileSavedStateIsIgnoredWithAReason() throws {
        let net = Fixture.network(), dir = Self.directory()
        let (reference, _) = try Fixture.reference(net)
        let monitor = DriftMonitor(version: 3, network: net, fileReference: reference, settings: Self.settings(dir)) { _ in }
        Self.feed(monitor, net, Fixture.rows(300, seed: 8))
        try monitor.save(force: true)
        let path = dir + "/v3.json"
        let good = try String(contentsOfFile: path, encoding: .utf8)
        let window = Data([UInt8](repeating: 255, count: 32 * 6)).base64EncodedString()
        let hostile: [(String, Bool)] = [
            ("not json at all", true),
            ("{}", true),
            (good.replacingOccurrences(of: "\"model_version\":3", with: "\"model_version\":4"), true),
            (good.replacingOccurrences(of: "\"source\":\"model\"", with: "\"source\":\"moon\""), true),
            (good.replacingOccurrences(of: "\"windows\":[\"", with: "\"windows\":[\"%%%"), true),
            // Bins past a feature's range and windows of the wrong length are clamped or skipped, never indexed.
            (good.replacingOccurrences(of: "\"windows\":[\"", with: "\"windows\":[\"\(window)\",\""), false),
            (good.replacingOccurrences(of: "\"samples\":300", with: "\"samples\":-5"), false),
            (String(repeating: "[", count: 100_000), true),
        ]
        for (text, refused) in hostile {
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            let m = DriftMonitor(version: 3, network: net, fileReference: reference, settings: Self.settings(dir)) { _ in }
            #expect((m.loadProblem != nil) == refused, "\(text.prefix(60)): \(String(describing: m.loadProblem))")
            Self.feed(m, net, Fixture.rows(100, seed: 9))
            #expect(m.snapshot().samples >= 100)
        }
    }

    @Test func fullStagingRingsDropRowsAndCountThem() {
        let net = Fixture.network(), dir = Self.directory()
        var settings = Self.settings(dir, warmup: 100_000)
        settings.ringBytes = 1
        let monitor = DriftMonitor(version: 3, network: net, fileReference: nil, settings: settings) { _ in }
        // With the lock free every row gets in (the worker drains when its ring fills).
        Self.feed(monitor, net, Fixture.rows(100, seed: 1))
        let s = monitor.snapshot()
        #expect(s.warmupRows == 100 && s.dropped == 0)
    }
}

@Suite struct DriftMonitorConcurrencyTests {
    /// Two workers observing, a reader, and a control thread resetting and saving, all at once
    /// (run under ThreadSanitizer too): nothing torn, every row counted or dropped.
    @Test func workersReadersResetsAndSavesAtOnce() throws {
        let net = Fixture.network(), dir = DriftMonitorTests.directory()
        let (reference, _) = try Fixture.reference(net)
        var settings = DriftMonitorTests.settings(dir)
        settings.ringBytes = 64 * (6 + 3 + 4) * 4
        let monitor = DriftMonitor(version: 3, network: net, fileReference: reference, settings: settings) { _ in }
        let rows = Fixture.rows(3_000, seed: 12)
        let done = DispatchGroup()
        for worker in 0..<2 {
            DispatchQueue.global().async(group: done) { DriftMonitorTests.feed(monitor, net, rows, worker: worker) }
        }
        DispatchQueue.global().async(group: done) {
            for _ in 0..<200 { _ = monitor.snapshot(); _ = monitor.summary() }
        }
        DispatchQueue.global().async(group: done) {
            for i in 0..<20 {
                if i % 5 == 0 { monitor.reset() }
                _ = try? monitor.save(force: true)
            }
        }
        done.wait()
        monitor.reset()
        // 600 rows from each worker (six values a row).
        DriftMonitorTests.feed(monitor, net, Array(rows[0..<3600]), worker: 0)
        DriftMonitorTests.feed(monitor, net, Array(rows[3600..<7200]), worker: 1)
        let s = monitor.snapshot()
        #expect(s.samples == 1200)
        #expect(s.signals.allSatisfy { $0.filled == $0.window })
    }
}

@Suite struct DriftEventTests {
    /// An alarm that clears within the same second: the clear is held back, then sent, so the
    /// event log's last word matches the state.
    @Test func aClearInsideTheSameSecondIsSentLater() async throws {
        let net = Fixture.network(), dir = DriftMonitorTests.directory(), events = DriftMonitorTests.Events()
        let (reference, _) = try Fixture.reference(net)
        let monitor = DriftMonitor(version: 3, network: net, fileReference: reference, settings: DriftMonitorTests.settings(dir)) { events.add($0) }
        DriftMonitorTests.feed(monitor, net, Fixture.rows(200, seed: 1) + Fixture.rows(100, seed: 2, shift: 4, feature: 3))
        DriftMonitorTests.feed(monitor, net, Fixture.rows(400, seed: 3))
        let s = monitor.snapshot()
        #expect(s.lastAlarm?.cleared != nil && s.state != .drift)
        func kinds() -> [String] { events.all.map { if case .detected = $0 { "detected" } else if case .cleared = $0 { "cleared" } else { "other" } } }
        #expect(kinds() == ["detected"])
        try await Task.sleep(for: .milliseconds(1100))
        _ = monitor.hasUnsavedAlarm
        #expect(kinds() == ["detected", "cleared"])
    }
}
