import Foundation
import ModelFile
import Tensor

/// What a signal watches. Each source is binned once per sample; several signals may share one.
public enum SignalSource: String, Codable, Sendable, CaseIterable {
    /// The raw input features, as the client sends them.
    case input
    /// The predicted class.
    case output
    /// The top class's softmax probability.
    case confidence
    /// The penultimate activations projected on fixed directions.
    case embedding
}

/// One calibrated detector: a source, how its features combine, its window and its threshold.
public struct SignalSpec: Codable, Equatable, Sendable {
    public var name: String
    public var source: SignalSource
    public var aggregate: Aggregate
    public var window: Int
    /// Alarm when the score exceeds this.
    public var threshold: Double
    /// Samples between false alarms of this signal alone, on the calibration streams.
    public var calibratedRunLength: Double?
    /// Whether the signal raises the alarm; the others are scored and reported only.
    public var alarms: Bool

    enum CodingKeys: String, CodingKey {
        case name, source, aggregate, window, threshold, alarms
        case calibratedRunLength = "calibrated_run_length"
    }

    public init(name: String, source: SignalSource, aggregate: Aggregate, window: Int, threshold: Double = .infinity,
                calibratedRunLength: Double? = nil, alarms: Bool = true) {
        self.name = name
        self.source = source
        self.aggregate = aggregate
        self.window = window
        self.threshold = threshold
        self.calibratedRunLength = calibratedRunLength
        self.alarms = alarms
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        source = try c.decode(SignalSource.self, forKey: .source)
        aggregate = try c.decode(Aggregate.self, forKey: .aggregate)
        window = try c.decode(Int.self, forKey: .window)
        threshold = try c.decode(Double.self, forKey: .threshold)
        calibratedRunLength = try c.decodeIfPresent(Double.self, forKey: .calibratedRunLength)
        alarms = try c.decodeIfPresent(Bool.self, forKey: .alarms) ?? true
    }

    /// The detectors the agent runs unless told otherwise (see the README's drift section):
    /// the input's max over features reacts to local changes, its sum over a longer window to
    /// small changes everywhere, the predicted class to a change of label prior. Confidence and
    /// embedding are scored and reported but raise no alarm: on the harness they never fired
    /// first, and each alarming signal takes a share of the false-alarm budget.
    public static let defaults: [SignalSpec] = [
        SignalSpec(name: "input", source: .input, aggregate: .max, window: 32),
        SignalSpec(name: "input_sum", source: .input, aggregate: .sum, window: 128),
        SignalSpec(name: "output", source: .output, aggregate: .max, window: 32),
        SignalSpec(name: "confidence", source: .confidence, aggregate: .max, window: 64, alarms: false),
        SignalSpec(name: "embedding", source: .embedding, aggregate: .sum, window: 64, alarms: false),
    ]
}

/// A source's bins and the reference rows' counts in them.
public struct SourceReference: Sendable, Equatable {
    public var bins: FeatureBins
    /// `[features, maxBins]`.
    public var counts: [Float]

    public init(bins: FeatureBins, counts: [Float]) {
        self.bins = bins
        self.counts = counts
    }
}

/// The field reference: per-source histograms, calibrated detectors and the embedding directions.
/// Stored in a model file as the manifest's `drift_reference` section plus `drift.*` tensors.
public struct DriftReference: Sendable, Equatable {
    public var alpha: Double
    /// Rows behind the histograms, the thresholds and the check.
    public var rows: Int
    public var calibrationRows: Int
    public var testRows: Int
    /// The run length between false alarms asked for, and the one measured on the test rows.
    public var falseAlarmRun: Int
    public var verifiedRunLength: Double?
    public var signals: [SignalSpec]
    public var sources: [SignalSource: SourceReference]
    /// Index in the network's layers of the layer whose input is projected, and `[k, d]` directions.
    public var embeddingLayer: Int?
    public var directions: Tensor?

    public init(alpha: Double, rows: Int, calibrationRows: Int, testRows: Int, falseAlarmRun: Int,
                verifiedRunLength: Double?, signals: [SignalSpec], sources: [SignalSource: SourceReference],
                embeddingLayer: Int?, directions: Tensor?) {
        self.alpha = alpha
        self.rows = rows
        self.calibrationRows = calibrationRows
        self.testRows = testRows
        self.falseAlarmRun = falseAlarmRun
        self.verifiedRunLength = verifiedRunLength
        self.signals = signals
        self.sources = sources
        self.embeddingLayer = embeddingLayer
        self.directions = directions
    }

    public static func == (a: DriftReference, b: DriftReference) -> Bool {
        a.alpha == b.alpha && a.rows == b.rows && a.signals == b.signals && a.sources == b.sources
            && a.embeddingLayer == b.embeddingLayer && a.directions?.values == b.directions?.values
    }

    /// Sources in binning order; a sample's bins are laid out source after source.
    public var sourceOrder: [SignalSource] { SignalSource.allCases.filter { sources[$0] != nil } }

    // MARK: model file

    struct Section: Codable {
        var alpha: Double
        var rows: Int
        var calibrationRows: Int
        var testRows: Int
        var falseAlarmRun: Int
        var verifiedRunLength: Double?
        var embeddingLayer: Int?
        var signals: [SignalSpec]

        enum CodingKeys: String, CodingKey {
            case alpha, rows, signals
            case calibrationRows = "calibration_rows"
            case testRows = "test_rows"
            case falseAlarmRun = "false_alarm_run"
            case verifiedRunLength = "verified_run_length"
            case embeddingLayer = "embedding_layer"
        }
    }

    public static func edgesTensor(_ s: SignalSource) -> String { "drift.\(s.rawValue).edges" }
    public static func countsTensor(_ s: SignalSource) -> String { "drift.\(s.rawValue).counts" }
    public static let directionsTensor = "drift.embedding.directions"
    public static let maxWindowBytes = 32 << 20

    /// The manifest section and the tensors that carry this reference in a model file.
    public func encoded() -> (section: JSONValue, tensors: [TensorBlob]) {
        let section = Section(alpha: alpha, rows: rows, calibrationRows: calibrationRows, testRows: testRows,
                              falseAlarmRun: falseAlarmRun, verifiedRunLength: verifiedRunLength.map { $0.isFinite ? $0 : 1e18 },
                              embeddingLayer: embeddingLayer,
                              signals: signals.map { var s = $0; s.calibratedRunLength = s.calibratedRunLength.map { $0.isFinite ? $0 : 1e18 }; return s })
        let data = try! JSONEncoder().encode(section)
        let json = try! JSONDecoder().decode(JSONValue.self, from: data)
        var blobs: [TensorBlob] = []
        for (source, ref) in sources {
            blobs.append(TensorBlob(name: Self.edgesTensor(source), tensor: Tensor(shape: [ref.bins.features, ref.bins.maxBins - 1], values: ref.bins.edges)))
            blobs.append(TensorBlob(name: Self.countsTensor(source), tensor: Tensor(shape: [ref.bins.features, ref.bins.maxBins], values: ref.counts)))
        }
        if let directions { blobs.append(TensorBlob(name: Self.directionsTensor, tensor: directions)) }
        return (json, blobs)
    }

    /// A tensor as stored: dtype name, shape and (for F32) its values.
    public struct StoredTensor: Sendable {
        public var dtype: String
        public var shape: [Int]
        public var values: [Float]
        public init(dtype: String, shape: [Int], values: [Float]) {
            self.dtype = dtype
            self.shape = shape
            self.values = values
        }
    }

    /// Reads and checks the reference of a model file (nil when it has none). Every value that
    /// would make a detector misbehave is refused with the place it was found.
    /// - Parameters: `inputCount`, `classCount`: the network's; `penultimate`: the index of the
    ///   network's last weighted layer and its input count.
    public static func load(_ model: ModelFile, inputCount: Int, classCount: Int,
                            penultimate: (layer: Int, inputs: Int)?) throws -> DriftReference? {
        guard let json = model.manifest.driftReference else { return nil }
        return try decode(section: json, file: model.path, inputCount: inputCount, classCount: classCount, penultimate: penultimate) { name in
            guard let e = model.header.entry(name), Manifest.isFieldTensor(name) else { return nil }
            let raw = model.rawBytes(e)
            let values = e.dtype == .f32
                ? (0..<(raw.count / 4)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) }
                : []
            return StoredTensor(dtype: e.dtype.rawValue, shape: e.shape, values: values)
        }
    }

    /// Decodes a `drift_reference` section and its tensors, wherever they are kept (a model
    /// file, or agentd's saved warm-up reference); `file` names the place in errors.
    public static func decode(section json: JSONValue, file: String, inputCount: Int, classCount: Int,
                              penultimate: (layer: Int, inputs: Int)?, tensor: (String) -> StoredTensor?) throws -> DriftReference {
        func fail(_ at: String, _ message: String) -> ModelFileError { ModelFileError(file: file, location: at, message) }
        let section: Section
        do {
            section = try JSONDecoder().decode(Section.self, from: JSONEncoder().encode(json))
        } catch {
            throw fail("drift_reference", "malformed: \(Self.describe(error))")
        }
        guard section.alpha.isFinite, section.alpha > 0, section.alpha <= 100 else { throw fail("drift_reference", "alpha must be in (0, 100]") }
        let counts = 0...1_000_000_000
        guard section.rows >= 1, counts.contains(section.rows), counts.contains(section.calibrationRows), counts.contains(section.testRows),
              (1...1_000_000_000).contains(section.falseAlarmRun) else {
            throw fail("drift_reference", "row counts must be 1...1e9")
        }
        guard !section.signals.isEmpty, section.signals.count <= 16 else { throw fail("drift_reference", "needs 1 to 16 signals") }
        var names = Set<String>()
        for (i, s) in section.signals.enumerated() {
            let at = "drift_reference signal \(i)"
            guard !s.name.isEmpty, s.name.count <= 32, s.name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }),
                  names.insert(s.name).inserted else { throw fail(at, "name must be a unique identifier of at most 32 characters") }
            guard (1...65_536).contains(s.window) else { throw fail(at, "window must be 1...65536") }
            guard s.threshold.isFinite, s.threshold > 0 else { throw fail(at, "threshold must be a positive finite number") }
        }
        func floats(_ name: String, _ shape: [Int]) throws -> [Float] {
            guard let e = tensor(name) else { throw fail("drift_reference", "tensor '\(name)' is not there") }
            guard e.dtype == "F32", e.shape == shape, e.values.count == shape.reduce(1, *) else {
                throw fail(name, "must be F32 of shape \(formatShape(shape)), is \(e.dtype) \(formatShape(e.shape))")
            }
            return e.values
        }
        var sources: [SignalSource: SourceReference] = [:]
        for source in Set(section.signals.map(\.source)) {
            let features: Int
            switch source {
            case .input: features = inputCount
            case .output, .confidence: features = 1
            case .embedding:
                guard let d = section.embeddingLayer else { throw fail("drift_reference", "an embedding signal needs embedding_layer") }
                guard let p = penultimate, p.layer == d else { throw fail("drift_reference", "embedding_layer \(d) is not the network's last dense or conv2d layer") }
                guard let e = tensor(directionsTensor), e.shape.count == 2, (1...64).contains(e.shape[0]) else {
                    throw fail("drift_reference", "tensor '\(directionsTensor)' must be F32 [k, \(p.inputs)] with k 1...64")
                }
                features = e.shape[0]
            }
            guard let edgesEntry = tensor(edgesTensor(source)), edgesEntry.shape.count == 2,
                  (1...255).contains(edgesEntry.shape[1]) else {
                throw fail("drift_reference", "tensor '\(edgesTensor(source))' must be F32 [\(features), bins − 1] with 2...256 bins")
            }
            let width = edgesEntry.shape[1]
            let edges = try floats(edgesTensor(source), [features, width])
            for f in 0..<features {
                let row = edges[(f * width)..<((f + 1) * width)]
                guard !row.contains(where: { $0.isNaN || $0 == -.infinity }) else { throw fail(edgesTensor(source), "feature \(f) has a NaN or −∞ edge") }
                let finite = row.prefix { $0.isFinite }
                guard row.dropFirst(finite.count).allSatisfy({ $0 == .infinity }), zip(finite, finite.dropFirst()).allSatisfy({ $0 < $1 }) else {
                    throw fail(edgesTensor(source), "feature \(f): edges must increase, padding (+∞) last")
                }
            }
            if source == .output && !(2...256).contains(classCount) {
                throw fail("drift_reference", "an output signal needs 2...256 classes, the model has \(classCount)")
            }
            if source == .output && (width + 1 != classCount || edges != FeatureBins.categorical(classes: classCount).edges) {
                throw fail(edgesTensor(source), "must hold one bin per class (\(classCount)): edges 0.5, 1.5, …")
            }
            let counts = try floats(countsTensor(source), [features, width + 1])
            guard counts.allSatisfy({ $0.isFinite && $0 >= 0 && $0 <= 1e9 }) else {
                throw fail(countsTensor(source), "counts must be finite, non-negative and at most 1e9")
            }
            sources[source] = SourceReference(bins: FeatureBins(features: features, maxBins: width + 1, edges: edges), counts: counts)
        }
        // Every window holds window × features bins: bound what a file can make agentd allocate.
        let windowBytes = section.signals.reduce(0) { $0 + $1.window * (sources[$1.source]?.bins.features ?? 0) }
        guard windowBytes <= maxWindowBytes else {
            throw fail("drift_reference", "windows would hold \(windowBytes) bytes; at most \(maxWindowBytes)")
        }
        var directions: Tensor?
        if let p = penultimate, sources[.embedding] != nil {
            let k = sources[.embedding]!.bins.features
            let d = try floats(directionsTensor, [k, p.inputs])
            guard d.allSatisfy(\.isFinite) else { throw fail(directionsTensor, "holds a value that is not finite") }
            directions = Tensor(shape: [k, p.inputs], values: d)
        }
        return DriftReference(alpha: section.alpha, rows: section.rows, calibrationRows: section.calibrationRows,
                              testRows: section.testRows, falseAlarmRun: section.falseAlarmRun,
                              verifiedRunLength: section.verifiedRunLength, signals: section.signals, sources: sources,
                              embeddingLayer: sources[.embedding] == nil ? nil : section.embeddingLayer, directions: directions)
    }

    static func describe(_ error: Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, _): return "missing '\(key.stringValue)'"
        case DecodingError.typeMismatch(_, let c), DecodingError.valueNotFound(_, let c), DecodingError.dataCorrupted(let c):
            let path = c.codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".")
            return path.isEmpty ? c.debugDescription : "at '\(path)': \(c.debugDescription)"
        default: return "\(error)"
        }
    }
}
