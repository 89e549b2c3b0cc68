import AgentConfig
import Crypto
import Foundation
import Inference
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
/// the slot swapped; a failure before the commit leaves everything as it was.
public final class ModelManager: @unchecked Sendable {
    public let database: AgentDatabase
    public let store: ModelStore
    public let slot: ModelSlot
    let logger: Logger
    private let lock = NSLock()

    init(database: AgentDatabase, store: ModelStore, slot: ModelSlot, logger: Logger) {
        self.database = database
        self.store = store
        self.slot = slot
        self.logger = logger
    }

    static func sha256Hex(_ bytes: [UInt8]) -> String {
        SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
    }

    /// Loads and validates a file into a serving model (no registry change).
    func load(path: String, version: Int, adaptive: Bool) throws -> ServingModel {
        let file = try ModelFile.load(path: path)
        let network = Network(model: file)
        let quantized = try QuantizedModel.load(file, network: network)
        return ServingModel(version: version, network: network, quantized: quantized, useAdaptive: adaptive)
    }

    /// First start: register the configured initial model (quantizing an FP32 one when the config
    /// asks for INT8). Later starts: serve the active registry version. Removes unreferenced files.
    func start(config: AgentConfig) throws {
        // A changed initial file (new content at model.initial) is registered as a new version.
        if !config.model.initial.isEmpty, let active = try database.activeModel(),
           let source = try? ModelFile.readWholeFile(path: config.model.initial) {
            let sourceHash = Self.sha256Hex(Array(UnsafeRawBufferPointer(source.bytes)))
            if try !database.models().contains(where: { $0.source.hasSuffix("#\(sourceHash)") }) {
                logger.notice("model.initial changed; registering it", metadata: ["active": "\(active.version)"])
                try registerInitial(config: config)
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

    private func registerInitial(config: AgentConfig) throws {
        let path = config.model.initial
        let file = try ModelFile.load(path: path)
        let sourceHash = Self.sha256Hex(Array(UnsafeRawBufferPointer(file.storage.bytes)))
        let network = Network(model: file)
        var quantized = try QuantizedModel.load(file, network: network)
        var bytes: [UInt8]
        if quantized == nil && config.model.precision == "int8" {
            guard !config.model.calibration.isEmpty else {
                throw ModelError(message: "\(path): model.precision is int8 but the model is FP32 and model.calibration names no rows to calibrate on")
            }
            let rows = try DataSet.load(path: config.model.calibration, featureCount: network.inputCount, classNames: network.labels,
                                        requireLabels: false)
            guard rows.count >= Quantizer.minimumCalibrationRows else {
                throw ModelError(message: "\(config.model.calibration): \(rows.count) rows; at least \(Quantizer.minimumCalibrationRows) are needed to calibrate")
            }
            let method = CalibrationMethod(rawValue: config.model.method) ?? .kl
            let params = Quantizer.activationParams(Quantizer.histograms(network, rows), network: network, method: method)
            let precisions = Dictionary(uniqueKeysWithValues: Quantizer.weightedLayers(network).map { ($0, LayerPrecision.int8) })
            var adaptive: AdaptivePrecision? = nil
            let model0 = Quantizer.build(network, activations: params, precisions: precisions, method: method, calibrationRows: rows.count)
            if config.model.adaptive {
                let q = QuantizedPlan(model: model0, batchCapacity: 64, adaptive: .off).predict(rows.features)
                let f = ExecutionPlan(network: network, batchCapacity: 64).predict(rows.features)
                adaptive = Sensitivity.adaptiveThreshold(quantized: q, reference: f, classes: network.outputCount)
            }
            let model = Quantizer.build(network, activations: params, precisions: precisions, method: method,
                                        calibrationRows: rows.count, adaptive: adaptive)
            var manifest = network.manifest()
            manifest.quantization = model.spec.json
            bytes = ModelWriter.encode(manifest: manifest, tensors: network.tensorBlobs() + model.tensorBlobs())
            quantized = model
        } else {
            bytes = Array(UnsafeRawBufferPointer(file.storage.bytes))
        }
        let sha = Self.sha256Hex(bytes)
        let stored = try store.store(bytes, sha256: sha)
        let serving = try load(path: stored, version: 0, adaptive: config.model.adaptive)
        let row = try database.register(name: network.name, sha256: sha, source: "initial:\(path)#\(sourceHash)", precision: serving.precision)
        slot.swap(ServingModel(version: row.version, network: serving.network, quantized: serving.quantized, useAdaptive: config.model.adaptive))
        try database.appendEvent(kind: "model_deployed", message: "\(network.name) registered as version \(row.version) (\(serving.precision)) from \(path)")
        logger.info("registered initial model", metadata: ["model.name": "\(network.name)", "model.version": "\(row.version)",
                                                           "model.precision": "\(serving.precision)"])
    }

    /// Switches to a registered version (nil: the version before the active one).
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
        let model = try load(path: store.path(for: target.sha256), version: target.version, adaptive: adaptive)
        guard let row = try database.activate(version: target.version) else { throw ModelError(message: "version \(target.version) vanished") }
        slot.swap(model)
        try database.appendEvent(kind: "rollback", message: "version \(active.version) -> \(row.version) (\(row.name))")
        logger.notice("rolled back", metadata: ["from": "\(active.version)", "to": "\(row.version)"])
        return row
    }

    /// SIGHUP: reload the active version's file (picks up a changed `adaptive` setting too).
    public func reload(adaptive: Bool) throws {
        guard let active = try database.activeModel() else { return }
        let model = try load(path: store.path(for: active.sha256), version: active.version, adaptive: adaptive)
        slot.swap(model)
    }
}
