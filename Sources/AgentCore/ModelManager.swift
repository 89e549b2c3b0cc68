import AgentConfig
import Crypto
import Drift
import Foundation
import Inference
import Learning
import Logging
import ModelFile
import Quantization
import Serving
import Store
import Training

/// Why a model could not become the serving model. The serving model is unchanged.
public struct ModelError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public var description: String { message }
}

/// Owns the model registry (SQLite rows), the immutable model files and the serving slot.
/// Every change follows one order: file stored and synced, then the registry row committed, then
/// the slot swapped; a failure before the commit leaves everything as it was. One lock covers the
/// slot's whole life (start, swap, rollback, reload), so no two of them interleave.
public final class ModelManager: @unchecked Sendable {
    public let database: AgentDatabase
    public let store: ModelStore
    public let slot: ModelSlot
    let events: StoreWriter
    let logger: Logger
    /// Each serving version gets a drift monitor with these settings (its `statePath` set per
    /// version); nil when `drift.enabled` is false.
    let drift: DriftMonitor.Settings?
    let driftDirectory: String
    let onDriftEvent: @Sendable (Int, DriftEvent) -> Void
    /// Sees every answered row of every serving model (the replay memory's live rows).
    let sampler: LiveSampler?
    private let lock = NSLock()

    init(database: AgentDatabase, store: ModelStore, slot: ModelSlot, events: StoreWriter, logger: Logger,
         drift: DriftMonitor.Settings? = nil, driftDirectory: String = "", onDriftEvent: @escaping @Sendable (Int, DriftEvent) -> Void = { _, _ in },
         sampler: LiveSampler? = nil) {
        self.database = database
        self.store = store
        self.slot = slot
        self.events = events
        self.logger = logger
        self.drift = drift
        self.driftDirectory = driftDirectory
        self.onDriftEvent = onDriftEvent
        self.sampler = sampler
    }

    static func sha256Hex(_ bytes: UnsafeRawBufferPointer) -> String {
        SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
    }

    static let initialSourceKey = "initial_source_sha256"

    static func sha256Hex(_ bytes: [UInt8]) -> String {
        bytes.withUnsafeBytes { sha256Hex($0) }
    }

    /// A validated model file's parts.
    struct LoadedFile {
        let network: Network
        let quantized: QuantizedModel?
        let reference: DriftReference?
        /// The file's name in the store: its SHA-256.
        let identity: String
        /// Bytes read (held as long as the network is) and the tensors made from them.
        let fileBytes: Int
    }

    /// Reads and validates a file, its quantization and its drift reference.
    func read(path: String) throws -> LoadedFile {
        let file = try ModelFile.load(path: path)
        let network = Network(model: file)
        let quantized = try QuantizedModel.load(file, network: network)
        let penultimate = EmbeddingProjection.penultimateLayer(of: network).map { ($0, network.layers[$0].inputCount) }
        let reference = try DriftReference.load(file, inputCount: network.inputCount, classCount: network.outputCount, penultimate: penultimate)
        // The learning sections are checked now: a bad one refuses the file, not a later update.
        do {
            _ = try EWCAnchor.decode(network)
            _ = try ReplaySeed.decode(network)
        } catch {
            throw ModelError(message: "\(path): \(error)")
        }
        return LoadedFile(network: network, quantized: quantized, reference: reference, identity: (path as NSString).lastPathComponent,
                          fileBytes: network.heldBytes(readFrom: file))
    }

    /// A serving model of a loaded file with its drift monitor (unless drift is off, or `monitor`
    /// is false for a file only being checked); `reusing` keeps a monitor of the same version.
    func serving(_ f: LoadedFile, version: Int, adaptive: Bool, monitor: Bool = true, reusing: DriftMonitor? = nil) -> ServingModel {
        let tap = monitor ? sampler?.tap(version: version, inputs: f.network.inputCount, classes: f.network.outputCount) : nil
        guard monitor, var settings = drift else {
            return ServingModel(version: version, network: f.network, quantized: f.quantized, useAdaptive: adaptive, sampler: tap,
                                fileBytes: f.fileBytes)
        }
        let drift: DriftMonitor
        if let reusing, reusing.version == version {
            drift = reusing
        } else {
            settings.statePath = "\(driftDirectory)/v\(version).json"
            settings.modelIdentity = f.identity
            let report = onDriftEvent
            drift = DriftMonitor(version: version, network: f.network, fileReference: f.reference, settings: settings) { report(version, $0) }
            if let problem = drift.loadProblem {
                logger.warning("saved drift state not used", metadata: ["model.version": "\(version)", "error": "\(problem)"])
            }
        }
        return ServingModel(version: version, network: f.network, quantized: f.quantized, useAdaptive: adaptive,
                            embedding: drift.projection, observer: drift, sampler: tap, fileBytes: f.fileBytes)
    }

    /// Loads and validates a file into a serving model (no registry change).
    func load(path: String, version: Int, adaptive: Bool, monitor: Bool = true, reusing: DriftMonitor? = nil) throws -> ServingModel {
        serving(try read(path: path), version: version, adaptive: adaptive, monitor: monitor, reusing: reusing)
    }

    /// Saves the drift state of the model being swapped out (it keeps its windows and alarm for
    /// when that version serves again).
    func saveDrift(of model: ServingModel?) {
        guard let monitor = model?.observer as? DriftMonitor else { return }
        do {
            try monitor.save()
        } catch {
            logger.error("drift state not saved", metadata: ["model.version": "\(monitor.version)", "error": "\(error)"])
        }
    }

    /// First start: register the configured initial model (quantizing an FP32 one when the config
    /// asks for INT8). Later starts: serve the active registry version; a changed `model.initial`
    /// is registered as a new version, and one that does not validate is logged and skipped. An
    /// empty registry beside model files on disk (a database moved aside or lost) is rebuilt from
    /// them first. Removes unreferenced files.
    func start(config: AgentConfig) throws {
        lock.lock()
        defer { lock.unlock() }
        let rebuilt = try rebuildRegistryIfEmpty(adaptive: config.model.adaptive)
        if !rebuilt, !config.model.initial.isEmpty, try database.activeModel() != nil {
            do {
                try registerChangedInitial(config: config)
            } catch {
                // The running version keeps serving; the operator learns why the new file was refused.
                events.appendEvent(kind: "initial_refused", message: "\(error)")
                logger.error("model.initial refused; serving the active version", metadata: ["error": "\(error)"])
            }
        }
        if let active = try database.activeModel() {
            let model = try load(path: store.path(for: active.sha256), version: active.version, adaptive: config.model.adaptive)
            slot.swap(model)
            logger.info("serving registered model", metadata: ["model.name": "\(active.name)", "model.version": "\(active.version)"])
        } else if !config.model.initial.isEmpty {
            try registerInitial(config: config)
        }
        let removed = try store.removeUnreferenced(keeping: database.referencedHashes())
        if !removed.isEmpty { logger.notice("removed unreferenced model files", metadata: ["files": "\(removed)"]) }
    }

    /// A changed initial file (new content at model.initial) is registered as a new version.
    private func registerChangedInitial(config: AgentConfig) throws {
        guard let source = try? ModelFile.readWholeFile(path: config.model.initial) else { return }
        let sourceHash = Self.sha256Hex(UnsafeRawBufferPointer(source.bytes))
        // Registered before: its source hash is on a row, or (an FP32 file stored as it is, or a
        // registry rebuilt from the files) its content is a stored file.
        if try !database.models().contains(where: { $0.source.hasSuffix("#\(sourceHash)") || $0.sha256 == sourceHash }) {
            logger.notice("model.initial changed; registering it")
            try registerInitial(config: config)
        }
    }

    /// Registers every stored file that validates, oldest first, in one transaction, when the
    /// registry is empty; the one active last (the store's marker) is active again, else the
    /// newest. A file that does not validate (or whose content is not its name) is renamed
    /// `*.invalid` and left alone; a database error fails the start with nothing registered.
    private func rebuildRegistryIfEmpty(adaptive: Bool) throws -> Bool {
        guard try database.models().isEmpty else { return false }
        let files = try store.files().sorted { $0.modified < $1.modified }
        guard !files.isEmpty else { return false }
        var valid: [(name: String, sha256: String, source: String, precision: String)] = []
        for f in files {
            do {
                let storage = try ModelFile.readWholeFile(path: f.path)
                guard Self.sha256Hex(UnsafeRawBufferPointer(storage.bytes)) == f.sha256 else {
                    throw ModelError(message: "\(f.path): content does not match its SHA-256 name")
                }
                let model = try load(path: f.path, version: 0, adaptive: adaptive, monitor: false)
                // A quantized initial model names its source file's hash (lineage), so a changed-initial
                // check after the rebuild still recognises it.
                var source = "recovered:\(f.sha256)"
                if case .object(let o)? = model.network.lineage, case .string(let h)? = o[Self.initialSourceKey] { source += "#\(h)" }
                valid.append((model.name, f.sha256, source, model.precision))
            } catch {
                logger.error("stored model file does not validate; set aside", metadata: ["file": "\(f.path)", "error": "\(error)"])
                _ = rename(f.path, f.path + ".invalid")
            }
        }
        guard let newest = valid.last else { return false }
        let marked = store.lastActive()
        let active = valid.contains { $0.sha256 == marked } ? marked! : newest.sha256
        let rows = try database.registerRecovered(valid, activeSha256: active)
        store.recordActive(sha256: active)
        let list = rows.map { "v\($0.version) \($0.name)\($0.active ? " (active)" : "")" }.joined(separator: ", ")
        events.appendEvent(kind: "registry_rebuilt", message: "registry rebuilt from \(files.count) model file(s) on disk: \(list)")
        logger.notice("registry rebuilt from the model files on disk", metadata: ["registered": "\(list)"])
        return true
    }

    private func registerInitial(config: AgentConfig) throws {
        let path = config.model.initial
        let file = try ModelFile.load(path: path)
        let sourceHash = Self.sha256Hex(UnsafeRawBufferPointer(file.storage.bytes))
        let network = Network(model: file)
        var quantized = try QuantizedModel.load(file, network: network)
        let bytes: [UInt8]
        if quantized == nil && config.model.precision == "int8" {
            let model = try Self.quantizeForField(network, config: config)
            var manifest = network.manifest()
            manifest.quantization = model.spec.json
            var lineage: [String: JSONValue] = [:]
            if case .object(let o)? = manifest.lineage { lineage = o }
            lineage[Self.initialSourceKey] = .string(sourceHash)
            manifest.lineage = .object(lineage)
            bytes = ModelWriter.encode(manifest: manifest, tensors: network.tensorBlobs() + model.tensorBlobs())
            quantized = model
        } else {
            bytes = Array(UnsafeRawBufferPointer(file.storage.bytes))
        }
        let row = try install(bytes: bytes, adaptive: config.model.adaptive) { sha, precision in
            try database.register(name: network.name, sha256: sha, source: "initial:\(path)#\(sourceHash)", precision: precision)
        }
        events.appendEvent(kind: "model_deployed", message: "\(network.name) registered as version \(row.version) (\(row.precision)) from \(path)")
        logger.info("registered initial model", metadata: ["model.name": "\(network.name)", "model.version": "\(row.version)",
                                                           "model.precision": "\(row.precision)"])
    }

    /// INT8 on `model.calibration`'s rows, with the adaptive threshold when `model.adaptive` and
    /// 7-bit weights when `model.reduce_range`.
    private static func quantizeForField(_ network: Network, config: AgentConfig) throws -> QuantizedModel {
        guard !config.model.calibration.isEmpty else {
            throw ModelError(message: "\(config.model.initial): model.precision is int8 but the model is FP32 and model.calibration names no rows to calibrate on")
        }
        let rows = try DataSet.load(path: config.model.calibration, featureCount: network.inputCount, classNames: network.labels,
                                    requireLabels: false)
        guard rows.count >= Quantizer.minimumCalibrationRows else {
            throw ModelError(message: "\(config.model.calibration): \(rows.count) rows; at least \(Quantizer.minimumCalibrationRows) are needed to calibrate")
        }
        let method = CalibrationMethod(rawValue: config.model.method) ?? .kl
        let precisions = Dictionary(uniqueKeysWithValues: Quantizer.weightedLayers(network).map { ($0, LayerPrecision.int8) })
        return Quantizer.calibrated(network, rows: rows, method: method, precisions: precisions, adaptive: config.model.adaptive,
                                    reduceRange: config.model.reduceRange)
    }

    /// Switches to a registered version (nil: the version before the active one). Throws
    /// `ModelError` when refused (nothing changed) and `StoreError` when the registry could not
    /// be read or written (nothing changed either: the registry row is the commit point).
    public func rollback(to version: Int?, adaptive: Bool) throws -> RegisteredModel {
        lock.lock()
        defer { lock.unlock() }
        let models = try database.models()
        guard let active = models.first(where: \.active) else { throw ModelError(message: "no model is active") }
        let target: RegisteredModel
        if let version {
            guard let m = models.first(where: { $0.version == version }) else {
                throw ModelError(message: "version \(version) is not registered (versions: \(models.map { String($0.version) }.joined(separator: ", ")))")
            }
            target = m
        } else {
            guard let previous = models.last(where: { $0.version < active.version }) else {
                throw ModelError(message: "version \(active.version) is the oldest registered version; nothing to roll back to")
            }
            target = previous
        }
        // Load first: a file that no longer validates never replaces the serving model.
        let model = try load(path: store.path(for: target.sha256), version: target.version, adaptive: adaptive,
                             reusing: slot.current?.observer as? DriftMonitor)
        guard let row = try database.activate(version: target.version) else { throw ModelError(message: "version \(target.version) vanished") }
        // Committed: from here on nothing may report the rollback as failed.
        store.recordActive(sha256: row.sha256)
        saveDrift(of: slot.swap(model))
        events.appendEvent(kind: "rollback", message: "version \(active.version) -> \(row.version) (\(row.name))")
        logger.notice("rolled back", metadata: ["from": "\(active.version)", "to": "\(row.version)"])
        return row
    }

    /// SIGHUP: reloads the active version's file (picking up `adaptive`); only once it loaded,
    /// `apply` runs and the slot is swapped, all under the slot's lock — a file that fails to
    /// load changes nothing.
    public func reload(adaptive: Bool, applying apply: () -> Void) throws {
        lock.lock()
        defer { lock.unlock() }
        guard let active = try database.activeModel() else {
            apply()
            return
        }
        // The same version keeps its drift monitor (windows and alarm as they are).
        let model = try load(path: store.path(for: active.sha256), version: active.version, adaptive: adaptive,
                             reusing: slot.current?.observer as? DriftMonitor)
        apply()
        slot.swap(model)
    }

    /// Installs a local update's file as a new active version — only if `base` still serves (a
    /// rollback or another change during the update drops it). Order as every change: file
    /// stored and synced, loaded and checked, then `commit` (the registry row and everything
    /// that goes with it, one transaction), then the slot swapped.
    func installLocalUpdate(bytes: [UInt8], base: Int, adaptive: Bool,
                            commit: (_ sha256: String, _ precision: String) throws -> RegisteredModel) throws -> RegisteredModel {
        lock.lock()
        defer { lock.unlock() }
        guard let active = try database.activeModel(), active.version == base, slot.current?.version == base else {
            throw ModelError(message: "version \(base) no longer serves (a rollback or another update came first); the update is dropped")
        }
        return try install(bytes: bytes, adaptive: adaptive, commit: commit)
    }

    /// Installs a verified deployment's file as the new active version; returns it and the version
    /// it replaced (for the health gate's rollback). A file that does not load changes nothing.
    func installDeployment(bytes: [UInt8], source: String, adaptive: Bool) throws -> (installed: RegisteredModel, previous: Int?) {
        lock.lock()
        defer { lock.unlock() }
        let previous = try database.activeModel()?.version
        let row = try install(bytes: bytes, adaptive: adaptive) { sha, precision in
            let name = (try? ModelFile.load(path: store.path(for: sha)).manifest.name) ?? "model"
            return try database.register(name: name, sha256: sha, source: source, precision: precision)
        }
        events.appendEvent(kind: "model_deployed", message: "\(row.name) registered as version \(row.version) (\(row.precision)) from \(source)")
        return (row, previous)
    }

    /// Every new file's way in (the caller holds the lock): stored and synced, loaded and
    /// checked, then `commit` (the registry row, one transaction), then the slot swapped. A
    /// failure before the commit removes a file this call stored.
    private func install(bytes: [UInt8], adaptive: Bool, commit: (_ sha256: String, _ precision: String) throws -> RegisteredModel) throws -> RegisteredModel {
        let sha = Self.sha256Hex(bytes)
        let existed = FileManager.default.fileExists(atPath: store.path(for: sha))
        let stored = try store.store(bytes, sha256: sha)
        let row: RegisteredModel, loaded: LoadedFile
        do {
            loaded = try read(path: stored)
            let check = serving(loaded, version: 0, adaptive: adaptive, monitor: false)
            row = try commit(sha, check.precision)
        } catch {
            if !existed { unlink(stored) }
            throw error
        }
        store.recordActive(sha256: sha)
        saveDrift(of: slot.swap(serving(loaded, version: row.version, adaptive: adaptive)))
        return row
    }
}
