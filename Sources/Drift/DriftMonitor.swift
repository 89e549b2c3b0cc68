import Foundation
import Inference
import ModelFile
import Synchronization
import Tensor

/// An alarm as reported and saved: the signal that fired first, its score and threshold, the
/// features that moved most, when, and when it cleared.
public struct DriftAlarm: Codable, Sendable, Equatable {
    public var signal: String
    public var score: Double
    public var threshold: Double
    public var top: [FeatureScore]
    public var at: String
    /// Samples since the reference was set, when it fired.
    public var sample: Int
    public var cleared: String?
}

public struct DriftSnapshot: Sendable {
    public var state: DriftState
    public var samples: Int
    /// "model" (the file's reference) or "warmup" (learnt from live rows).
    public var referenceSource: String
    public var referenceRows: Int
    public var warmupRows: Int
    public var warmupTarget: Int
    public var signals: [DriftDetector.SignalReport]
    public var lastAlarm: DriftAlarm?
    /// Rows not observed because a worker's staging ring was full.
    public var dropped: Int
}

public enum DriftEvent: Sendable {
    case detected(DriftAlarm)
    case cleared(DriftAlarm)
    case referenceReady(rows: Int, runLength: Double?)
    case referenceFailed(String)
}

/// The drift monitor of one serving model version. Inference workers copy each answered row into
/// their own staging ring (no lock, no allocation) and then drain the rings into the detector if
/// the monitor's lock is free (`try`, never wait); readers drain before they answer, so a row is
/// counted by the time its client can ask. Without a reference in the model file the first
/// `warmupRows` rows become one (built off the serving path). State is saved to `statePath` by
/// `save()`; the owner calls it periodically and when the model is swapped out.
public final class DriftMonitor: RowObserver, @unchecked Sendable {
    public struct Settings: Sendable {
        public var warmupRows = 1000
        public var falseAlarmRun = 2000
        public var workers = 1
        public var statePath: String?
        /// Bytes of each worker's staging ring (at least 16 rows).
        public var ringBytes = 1 << 20
        public var embeddingDims = 8
        /// What the saved state must belong to besides the version (the model file's name, which
        /// is its SHA-256): a registry rebuilt with other files never restores a stranger's windows.
        public var modelIdentity = ""
        public init() {}
    }

    public let version: Int
    public let projection: EmbeddingProjection?
    public let fileReference: DriftReference?
    public let settings: Settings
    public private(set) var loadProblem: String?
    let inputCount: Int, classes: Int, probabilities: Bool, embeddingCount: Int
    let penultimate: (layer: Int, inputs: Int)?
    private let onEvent: @Sendable (DriftEvent) -> Void
    private let rings: [StagingRing]
    private let lock = NSLock()
    private let saveLock = NSLock()
    private let droppedRows = Atomic<Int>(0)
    // Guarded by `lock`.
    private var detector: DriftDetector?
    private var source = "model"
    private var warmup: [SignalSource: [Float]] = [:]
    private var warmupCount = 0
    private var building = false
    private var generation = 0
    private var lastAlarm: DriftAlarm?
    private var binned: [UInt8]
    private var dirty = true
    private var samplesAtSave = -1
    private var lastEventAt: UInt64 = 0
    private var pendingEvent: DriftEvent?

    public init(version: Int, network: Network, fileReference: DriftReference?, settings: Settings,
                onEvent: @escaping @Sendable (DriftEvent) -> Void) {
        self.version = version
        self.fileReference = fileReference
        self.settings = settings
        self.onEvent = onEvent
        inputCount = network.inputCount
        classes = network.outputCount
        probabilities = network.endsWithSoftmax
        penultimate = EmbeddingProjection.penultimateLayer(of: network).map { ($0, network.layers[$0].inputCount) }
        // The file's directions; else fixed seeded ones (the same after a restart, so a saved
        // warm-up reference stays valid).
        if let ref = fileReference {
            if let d = ref.directions, let l = ref.embeddingLayer { projection = EmbeddingProjection(layer: l, directions: d) } else { projection = nil }
        } else {
            projection = DriftPreparation.randomDirections(network: network, count: settings.embeddingDims, seed: 1)
        }
        let stride = network.inputCount + network.outputCount + (projection?.count ?? 0)
        embeddingCount = projection?.count ?? 0
        let capacity = max(16, settings.ringBytes / (stride * MemoryLayout<Float>.stride))
        rings = (0..<max(1, settings.workers)).map { _ in StagingRing(capacity: capacity, stride: stride) }
        binned = []
        if let ref = fileReference {
            detector = DriftDetector(reference: ref, classes: classes, scoresAreProbabilities: probabilities)
            binned = [UInt8](repeating: 0, count: detector!.binner.width)
        } else {
            source = "warmup"
        }
        restoreSaved()
    }

    // MARK: observing (inference workers)

    public func observe(worker: Int, input: UnsafePointer<Float>, scores: UnsafePointer<Float>, embeddings: UnsafePointer<Float>?, rows: Int) {
        let n = inputCount, k = classes, e = embeddings == nil ? 0 : embeddingCount
        guard worker >= 0 && worker < rings.count, embeddings != nil || embeddingCount == 0 else {
            // Not one of the workers the rings were made for (or a plan without the tap):
            // never share a single-producer ring; count the rows as not observed.
            droppedRows.add(rows, ordering: .relaxed)
            return
        }
        let ring = rings[worker]
        for r in 0..<rows {
            let parts = ((input + r * n, n), (scores + r * k, k), (embeddings.map { $0 + r * e }, e))
            if ring.push(parts.0, parts.1, parts.2) { continue }
            if lock.try() {
                drainLocked()
                lock.unlock()
                if ring.push(parts.0, parts.1, parts.2) { continue }
            }
            droppedRows.add(1, ordering: .relaxed)
        }
        if lock.try() {
            drainLocked()
            lock.unlock()
        }
    }

    private func drainLocked() {
        for ring in rings { ring.drain { processLocked($0) } }
        if pendingEvent != nil { flushEventLocked() }
    }

    @inline(__always)
    private func processLocked(_ row: UnsafePointer<Float>) {
        let scores = row + inputCount
        let embedding: UnsafePointer<Float>? = embeddingCount > 0 ? row + inputCount + classes : nil
        if let d = detector {
            let change = binned.withUnsafeMutableBufferPointer { out -> DriftTransition? in
                d.binner.bin(input: row, scores: scores, embedding: embedding, into: out.baseAddress!)
                return d.observe(out.baseAddress!)
            }
            if let change { handleLocked(change, d) }
            return
        }
        guard !building else { return }
        let sources = DriftPreparation.sources(classes: classes, embedding: embeddingCount > 0)
        let values = SampleBinner.values(sources: sources, inputCount: inputCount, classes: classes, probabilities: probabilities,
                                         embeddingCount: embeddingCount, input: row, scores: scores, embedding: embedding)
        for (s, v) in values { warmup[s, default: []].append(contentsOf: v) }
        warmupCount += 1
        if warmupCount >= settings.warmupRows { startBuildLocked() }
    }

    private func handleLocked(_ change: DriftTransition, _ d: DriftDetector) {
        let now = Self.timestamp()
        let event: DriftEvent?
        switch change {
        case .detected(let signal, let score, let threshold, let top):
            let alarm = DriftAlarm(signal: signal, score: score, threshold: threshold, top: top, at: now, sample: d.samples, cleared: nil)
            lastAlarm = alarm
            event = .detected(alarm)
        case .cleared:
            lastAlarm?.cleared = now
            // A restored alarm may have no record: the clear is still announced.
            event = .cleared(lastAlarm ?? DriftAlarm(signal: "restored", score: 0, threshold: 0, top: [], at: now, sample: d.samples, cleared: now))
        }
        dirty = true
        // Inputs that swing in and out of drift would flood the event log: at most one alarm
        // event per second. A change inside that second waits as `pendingEvent` (the latest
        // one), so the log's last word always matches the state; the state, the counts and
        // `last_alarm` follow every change at once.
        pendingEvent = event
        flushEventLocked()
    }

    private func flushEventLocked() {
        guard let event = pendingEvent else { return }
        let t = DispatchTime.now().uptimeNanoseconds
        guard lastEventAt == 0 || t &- lastEventAt >= 1_000_000_000 else { return }
        lastEventAt = t
        pendingEvent = nil
        onEvent(event)
    }

    /// Builds the warm-up reference on a background queue; rows arriving meanwhile are not kept.
    private func startBuildLocked() {
        building = true
        let gen = generation, values = warmup, rows = warmupCount
        warmup = [:]
        var options = DriftCalibration.Options()
        options.falseAlarmRun = settings.falseAlarmRun
        let classes = self.classes, probabilities = self.probabilities, projection = self.projection, opts = options
        DispatchQueue.global(qos: .utility).async { [self] in
            let result = Result {
                try DriftCalibration.build(values: values, rows: rows, classes: classes, scoresAreProbabilities: probabilities,
                                           embeddingLayer: projection?.layer, directions: projection?.directions, options: opts)
            }
            lock.lock()
            defer { lock.unlock() }
            guard gen == generation else { return }
            building = false
            warmupCount = 0
            switch result {
            case .success(let outcome):
                install(outcome.reference)
                source = "warmup"
                dirty = true
                onEvent(.referenceReady(rows: outcome.reference.rows, runLength: outcome.reference.verifiedRunLength))
            case .failure(let error):
                onEvent(.referenceFailed("\(error)"))
            }
        }
    }

    private func install(_ reference: DriftReference) {
        let d = DriftDetector(reference: reference, classes: classes, scoresAreProbabilities: probabilities)
        detector = d
        binned = [UInt8](repeating: 0, count: d.binner.width)
    }

    // MARK: readers and control

    public func snapshot() -> DriftSnapshot {
        lock.lock()
        defer { lock.unlock() }
        drainLocked()
        let d = detector
        return DriftSnapshot(
            state: d?.state ?? .warmingUp, samples: d?.samples ?? 0, referenceSource: source,
            referenceRows: d.map { $0.reference.rows + $0.reference.calibrationRows + $0.reference.testRows } ?? 0,
            warmupRows: d == nil ? warmupCount : 0, warmupTarget: settings.warmupRows,
            signals: d?.report() ?? [], lastAlarm: lastAlarm, dropped: droppedRows.load(ordering: .relaxed))
    }

    /// State and each signal's score and threshold, for the gauges (no PSI, JS or top features:
    /// a scrape holds the lock only as long as a sample does).
    public func gauges() -> (state: DriftState, signals: [(name: String, score: Double, threshold: Double)]) {
        lock.lock()
        defer { lock.unlock() }
        drainLocked()
        guard let d = detector else { return (.warmingUp, []) }
        return (d.state, zip(d.reference.signals, d.scores).map { ($0.name, $1, $0.threshold) })
    }

    /// Temporary files a save left behind when the process died mid-write.
    public static func removeLeftovers(in directory: String) {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return }
        for name in names where name.hasPrefix(".v") && name.contains(".json.tmp-") { unlink(directory + "/" + name) }
    }

    /// State, samples, reference source and warm-up progress, without the per-signal report.
    public func summary() -> (state: DriftState, samples: Int, source: String, warmupRows: Int) {
        lock.lock()
        defer { lock.unlock() }
        drainLocked()
        return (detector?.state ?? .warmingUp, detector?.samples ?? 0, source, detector == nil ? warmupCount : 0)
    }

    /// The signals of the reference in use (nil while warming up).
    public var currentSignals: [SignalSpec]? {
        lock.lock()
        defer { lock.unlock() }
        return detector?.reference.signals
    }

    /// An alarm change, a reset or a new reference not yet saved.
    public var hasUnsavedAlarm: Bool {
        lock.lock()
        defer { lock.unlock() }
        drainLocked()  // also sends an alarm event held back by the one-a-second limit
        return dirty
    }

    /// Clears the windows and alarms and goes back to the model file's reference; a file without
    /// one starts a new warm-up.
    public func reset() {
        lock.lock()
        defer { lock.unlock() }
        drainLocked()
        generation += 1
        building = false
        warmup = [:]
        warmupCount = 0
        lastAlarm = nil
        if let ref = fileReference {
            install(ref)
            source = "model"
        } else {
            detector = nil
            source = "warmup"
        }
        dirty = true
    }

    // MARK: saving

    struct SavedTensor: Codable {
        var shape: [Int]
        var values: [Float]
    }

    struct SavedState: Codable {
        var format = 1
        var modelVersion: Int
        var source: String
        /// A warm-up reference: the section and tensors a model file would hold.
        var reference: JSONValue?
        var tensors: [String: SavedTensor]?
        var model: String?
        var samples: Int
        var state: DriftState
        var lastAlarm: DriftAlarm?
        /// Each signal's window, oldest first, base64.
        var windows: [String]

        enum CodingKeys: String, CodingKey {
            case format, source, reference, tensors, samples, state, windows, model
            case modelVersion = "model_version"
            case lastAlarm = "last_alarm"
        }
    }

    /// Writes the state if anything changed since the last save (or `force`). Atomic: a crash
    /// leaves the previous file or this one.
    @discardableResult
    public func save(force: Bool = false) throws -> Bool {
        guard let path = settings.statePath else { return false }
        saveLock.lock()
        defer { saveLock.unlock() }
        lock.lock()
        drainLocked()
        let samples = detector?.samples ?? -1
        guard force || dirty || samples != samplesAtSave else {
            lock.unlock()
            return false
        }
        var state = SavedState(modelVersion: version, source: source, reference: nil, tensors: nil, model: settings.modelIdentity,
                               samples: max(samples, 0), state: detector?.state ?? .warmingUp,
                               lastAlarm: lastAlarm, windows: (detector?.windowContents() ?? []).map { Data($0).base64EncodedString() })
        if source == "warmup", let ref = detector?.reference {
            let (section, blobs) = ref.encoded()
            state.reference = section
            state.tensors = Dictionary(uniqueKeysWithValues: blobs.map { b in
                (b.name, SavedTensor(shape: b.shape, values: b.bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }))
            })
        }
        dirty = false
        samplesAtSave = samples
        lock.unlock()
        do {
            let encoder = JSONEncoder()
            encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
            try ModelWriter.writeAtomically(Array(try encoder.encode(state)), to: path)
        } catch {
            // Not saved: the next save tries again.
            lock.lock()
            dirty = true
            samplesAtSave = -1
            lock.unlock()
            throw error
        }
        return true
    }

    public static let maxStateBytes = 64 << 20

    /// Reads the saved state of this version, if any. A file that does not fit (another
    /// reference, a damaged or hostile file) is reported in `loadProblem` and ignored.
    private func restoreSaved() {
        guard let path = settings.statePath, FileManager.default.fileExists(atPath: path) else { return }
        do {
            let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? nil
            guard let size, size <= Self.maxStateBytes else { throw ModelFileError(file: path, "larger than \(Self.maxStateBytes) bytes (or not a file)") }
            let storage = try ModelFile.readWholeFile(path: path)
            guard storage.byteCount <= Self.maxStateBytes else { throw ModelFileError(file: path, "larger than \(Self.maxStateBytes) bytes") }
            let decoder = JSONDecoder()
            decoder.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
            let saved: SavedState
            do {
                saved = try decoder.decode(SavedState.self, from: Data(UnsafeRawBufferPointer(storage.bytes)))
            } catch {
                throw ModelFileError(file: path, "malformed: \(DriftReference.describe(error))")
            }
            guard saved.format == 1, saved.modelVersion == version else {
                throw ModelFileError(file: path, "is for model version \(saved.modelVersion), format \(saved.format)")
            }
            guard (saved.model ?? "") == settings.modelIdentity else {
                throw ModelFileError(file: path, "belongs to model file '\(saved.model ?? "")', not '\(settings.modelIdentity)'")
            }
            let windows = try saved.windows.map { s -> [UInt8] in
                guard let data = Data(base64Encoded: s) else { throw ModelFileError(file: path, "a window is not base64") }
                return Array(data)
            }
            switch saved.source {
            case "warmup":
                guard fileReference == nil else { return }  // the file has gained a reference: use it
                if let section = saved.reference, let tensors = saved.tensors {
                    let ref = try DriftReference.decode(section: section, file: path, inputCount: inputCount, classCount: classes,
                                                        penultimate: penultimate) { name in
                        tensors[name].map { DriftReference.StoredTensor(dtype: "F32", shape: $0.shape, values: $0.values) }
                    }
                    if ref.sources[.embedding] != nil, ref.directions?.values != projection?.directions.values {
                        throw ModelFileError(file: path, "embedding directions differ from the serving plan's")
                    }
                    install(ref)
                }
                source = "warmup"
            case "model":
                guard fileReference != nil else { return }
            default:
                throw ModelFileError(file: path, "unknown source '\(saved.source)'")
            }
            guard let d = detector else { return }
            d.restore(windows: windows, state: saved.state, samples: saved.samples)
            lastAlarm = saved.lastAlarm
            samplesAtSave = d.samples
            dirty = false
        } catch {
            // Kept aside for a look, and out of the way of the next save.
            loadProblem = "\(error); moved aside to \(path).rejected"
            _ = rename(path, path + ".rejected")
        }
    }

    static func timestamp() -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.string(from: Date())
    }
}
