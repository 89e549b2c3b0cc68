import ArgumentParser
import Foundation
import Inference
import ModelFile
import Quantization
import Tensor
import Training

struct Quantize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Quantize a model file: calibrate activations, quantize weights, write a new file.",
        discussion: """
            INT8: weights symmetric per output channel in -127...127; activations UINT8 per tensor
            with a zero point (zero point 0 and all 256 levels for tensors that are never negative);
            INT32 accumulation; FP32 requantization; ReLU/ReLU6 fused into the clamp.
            INT4 (dense layers): groups of --group inputs with one scale each; integer arithmetic
            on AVX-512 VNNI with UINT8 activations (W4A8: the calibrated parameters of each input,
            as INT8 layers, recorded as int4_activations "static"; files written before that
            quantize each row over its own range), on AVX2 with each row quantized to int16
            (W4A16), elsewhere FP32 arithmetic on INT4 weights (weight-only); conv2d layers stay
            INT8.

            The calibration CSV is split as 'train' splits: every 5th row is held out to measure
            FP32 vs quantized accuracy and agreement; the other rows calibrate (at least 32).
            The output keeps the FP32 weights (for FP32 fallback and on-device learning) and adds
            the quantized tensors and a 'quantization' manifest section, so loading it needs no
            recalibration. Nothing is written if anything fails.
            --integer-only leaves out the FP32 weights of the INT8 and INT4 layers (an INT8 file
            about a quarter of the FP32 one, INT4 about a seventh): the loader rebuilds them from
            the integer weights (q · scale), so on-device learning starts from those, and there is
            no FP32 fallback to re-run samples on (--adaptive is refused with it).

            --reduce-range quantizes INT8 weights to -63...63 (7 bits, as ONNX Runtime's
            reduce_range). On an AVX2 CPU without VNNI the INT8 kernel then multiplies with
            vpmaddubsw, which 8-bit weights could saturate: about 1.25x the GEMM throughput of
            the exact int16 kernel ('agentctl model bench' names the kernel each plan runs).
            It costs one bit of weight precision: check the report's accuracy and SQNR.

            Methods: minmax, percentile (--percentile, 99.99), kl (TensorRT-style entropy search
            over a 2048-bin histogram), mse (least expected squared error).
            --precision auto keeps the most sensitive layers in FP32, one at a time, until the
            held-out accuracy is within --budget points of FP32. It chooses on half of the
            held-out rows (split by a hash of the row index) and reports accuracy on the
            other half, never on the rows that chose.
            --adaptive chooses a top-1 margin threshold on the calibration rows reaching 99.5%
            agreement with FP32 while re-running at most 10% of samples in FP32.

            Example:
              agentctl model quantize mlp.safetensors mlp-int8.safetensors --calib tools/data/digits.csv --method kl
            """
    )

    @Argument(help: ArgumentHelp("The FP32 model file.", valueName: "IN")) var input: String
    @Argument(help: ArgumentHelp("Where to write the quantized model.", valueName: "OUT")) var output: String
    @Option(help: ArgumentHelp("Calibration rows (CSV; a 'label' column enables accuracy).", valueName: "CSV")) var calib: String
    @Option(help: "kl, minmax, percentile or mse.") var method: CalibrationMethod = .kl
    @Option(help: "int8, int4 or auto.") var precision: QuantizePrecision = .int8
    @Option(help: "Accuracy drop allowed by --precision auto, in points.") var budget: Float = 0.3
    @Option(help: "Percentile for --method percentile.") var percentile: Double = 99.99
    @Option(help: "INT4 group size: 32, 64 or 128.") var group: Int = 32
    @Flag(help: "Choose an adaptive-precision threshold (FP32 re-run of low-margin samples).") var adaptive = false
    @Option(help: "A fixed adaptive threshold on the top-1 margin instead of choosing one.") var threshold: Float?
    @Flag(help: "Leave out the FP32 weights of the integer layers (a smaller file; no FP32 fallback).") var integerOnly = false
    @Flag(help: "INT8 weights in 7 bits (-63...63): faster on AVX2 CPUs without VNNI, one bit less weight precision.")
    var reduceRange = false
    @Flag(help: "Print the report as JSON.") var json = false

    enum QuantizePrecision: String, ExpressibleByArgument { case int8, int4, auto }

    func validate() throws {
        guard [32, 64, 128].contains(group) else { throw ValidationError("--group must be 32, 64 or 128") }
        if integerOnly && (adaptive || threshold != nil) {
            throw ValidationError("--integer-only leaves no FP32 weights to re-run samples on: it cannot be used with --adaptive or --threshold")
        }
        guard budget >= 0 else { throw ValidationError("--budget must be non-negative") }
        guard percentile > 50, percentile <= 100 else { throw ValidationError("--percentile must be in (50, 100]") }
    }

    struct LayerRow: Codable {
        var layer: Int
        var op: String
        var precision: String
        var weightScaleMin: Float?
        var weightScaleMax: Float?
        var inputScale: Float?
        var outputThreshold: Float?
        var sqnrDB: Double?
        var accuracyDropAlone: Float?
        var note: String?
    }

    struct Report: Codable {
        var model: String
        var method: String
        var precision: String
        /// 7 with --reduce-range when some layer is INT8, else 8.
        var int8WeightBits: Int
        var calibrationRows: Int
        var heldOutRows: Int
        /// With --precision auto: the held-out rows that chose the FP32 layers (not counted in heldOutRows).
        var selectionRows: Int?
        var fp32Accuracy: Float?
        var quantizedAccuracy: Float?
        var agreement: Float
        var sqnrDB: Double
        var adaptive: AdaptivePrecision?
        var adaptiveAccuracy: Float?
        var adaptiveAgreement: Float?
        var layers: [LayerRow]
        var out: String
    }

    func run() throws {
        try reportingErrors {
            let loaded = try LoadedModel(path: input)
            let network = loaded.network
            let all = try DataSet.load(path: calib, featureCount: network.inputCount, classNames: network.labels, requireLabels: false)
            let (calibration, allHeldOut) = all.split()
            // --precision auto chooses its FP32 layers on half of the held-out rows and reports on
            // the other half: accuracy measured on the rows that made the choice would be optimistic.
            // The halves by a hash of the row index, not alternate rows: a file ordered in cycles of
            // classes (digits.csv repeats 0–9) would give each half a different class mix.
            let half = { (i: Int) -> Bool in (UInt32(truncatingIfNeeded: i &* 2_654_435_761) >> 16) & 1 == 0 }
            let selection = precision == .auto ? allHeldOut.rows((0..<allHeldOut.count).filter(half)) : allHeldOut
            let heldOut = precision == .auto ? allHeldOut.rows((0..<allHeldOut.count).filter { !half($0) }) : allHeldOut
            guard calibration.count >= Quantizer.minimumCalibrationRows else {
                throw DataSetError(file: calib, "has \(calibration.count) calibration rows after holding out every 5th; at least \(Quantizer.minimumCalibrationRows) are needed")
            }
            let histograms = Quantizer.histograms(network, calibration)
            // Ranges learned by quantization-aware training (`train --qat int8`) replace the calibrated
            // ones for the tensors they cover; the loader has checked the section.
            let learned = (network.qat.flatMap { try? QATRanges($0, tensors: network.layers.count + 1) })?.activations ?? [:]
            if !learned.isEmpty && !json {
                printError("activation ranges: \(learned.count) tensors from quantization-aware training, the others calibrated (\(method.rawValue))")
                if reduceRange {
                    printError("note: training fake-quantized the weights to 8 bits; --reduce-range quantizes them to 7 (the accuracy below shows the cost)")
                }
            }
            let activations = Quantizer.activationParams(histograms, network: network, method: method, percentile: percentile,
                                                         learned: learned)
            let preferred: (Int) -> LayerPrecision = { l in
                if self.precision == .int4, case .dense = network.layers[l].kind { return .int4 }
                return .int8
            }
            var precisions = Dictionary(uniqueKeysWithValues: Quantizer.weightedLayers(network).map { ($0, preferred($0)) })
            let sensitivity: [Int: (sqnr: Double, drop: Float)]
            if precision == .auto {
                let r = Sensitivity.autoPrecision(network, activations: activations, heldOut: selection, budget: budget, preferred: preferred,
                                                  method: method, calibrationRows: calibration.count, reduceRange: reduceRange)
                precisions = r.precisions
                sensitivity = r.sensitivity
            } else {
                sensitivity = Sensitivity.perLayer(network, activations: activations, heldOut: heldOut, precision: preferred, method: method,
                                                   calibrationRows: calibration.count, reduceRange: reduceRange)
            }
            var model = Quantizer.build(network, activations: activations, precisions: precisions, method: method,
                                        calibrationRows: calibration.count, int4Group: group, reduceRange: reduceRange)
            let fp32Held = ExecutionPlan(network: network, batchCapacity: 64).predict(heldOut.features)
            let quantHeld = QuantizedPlan(model: model, batchCapacity: 64, adaptive: .off).predict(heldOut.features)
            let k = network.outputCount
            let fp32 = Sensitivity.compare(fp32Held, reference: fp32Held, classes: k, labels: heldOut.labels)
            let quant = Sensitivity.compare(quantHeld, reference: fp32Held, classes: k, labels: heldOut.labels)
            var adaptiveSpec: AdaptivePrecision? = nil
            var adaptiveResult: PlanComparison? = nil
            if adaptive || threshold != nil {
                if let threshold {
                    adaptiveSpec = AdaptivePrecision(mode: .fixed, threshold: threshold)
                } else {
                    let q = QuantizedPlan(model: model, batchCapacity: 64, adaptive: .off).predict(calibration.features)
                    let f = ExecutionPlan(network: network, batchCapacity: 64).predict(calibration.features)
                    adaptiveSpec = Sensitivity.adaptiveThreshold(quantized: q, reference: f, classes: k)
                }
                model = Quantizer.build(network, activations: activations, precisions: precisions, method: method,
                                        calibrationRows: calibration.count, int4Group: group, adaptive: adaptiveSpec,
                                        reduceRange: reduceRange)
                let plan = QuantizedPlan(model: model, batchCapacity: 64)
                adaptiveResult = Sensitivity.compare(plan.predict(heldOut.features), reference: fp32Held, classes: k, labels: heldOut.labels)
            }
            try model.write(to: output, integerOnly: integerOnly)

            let rows = network.layers.indices.filter { network.layers[$0].weight != nil }.map { l -> LayerRow in
                let entry = model.spec.layers.first { $0.layer == l }
                let p = entry?.precision ?? .fp32
                let scales = model.int8[l]?.scales ?? model.int4[l]?.scales
                // The input scale a layer runs with: INT8's, and static INT4's (on W4A8).
                let staticInput = p == .int8 || (p == .int4 && model.spec.int4ActivationsOrDefault == .calibrated)
                let fused = l + 1 < network.layers.count && network.layers[l + 1].kind.activation != nil
                let outTensor = fused ? l + 2 : l + 1
                return LayerRow(layer: l, op: network.layers[l].name, precision: p.rawValue, weightScaleMin: scales?.min(),
                                weightScaleMax: scales?.max(), inputScale: staticInput ? activations[String(l)]?.scale : nil,
                                outputThreshold: activations[String(outTensor)]?.range.upperBound,
                                sqnrDB: sensitivity[l]?.sqnr, accuracyDropAlone: sensitivity[l]?.drop, note: entry?.note)
            }
            let report = Report(model: network.name, method: method.rawValue, precision: model.precisionName,
                                int8WeightBits: model.spec.reduceRange == true ? 7 : 8, calibrationRows: calibration.count,
                                heldOutRows: heldOut.count, selectionRows: precision == .auto ? selection.count : nil, fp32Accuracy: fp32.accuracy, quantizedAccuracy: quant.accuracy,
                                agreement: quant.agreement, sqnrDB: quant.sqnr, adaptive: adaptiveSpec,
                                adaptiveAccuracy: adaptiveResult?.accuracy, adaptiveAgreement: adaptiveResult?.agreement, layers: rows, out: output)
            if json { printJSON(report); return }
            let chose = precision == .auto ? " (\(selection.count) more held out chose the FP32 layers)" : ""
            let bits = model.spec.reduceRange == true ? ", INT8 weights in 7 bits (-63...63)" : ""
            print("\(network.name): \(method.rawValue) calibration on \(calibration.count) rows, \(heldOut.count) held out\(chose)\(bits)\n")
            func f(_ x: Float?, _ format: String = "%.3g") -> String { x.map { String(format: format, Double($0)) } ?? "-" }
            print(table(["layer", "op", "precision", "weight scale", "input scale", "out threshold", "SQNR dB", "drop alone", "note"],
                        rows.map { r in
                            ["\(r.layer)", r.op, r.precision,
                             r.weightScaleMin.map { "\(f($0))..\(f(r.weightScaleMax))" } ?? "-",
                             f(r.inputScale), f(r.outputThreshold), r.sqnrDB.map { String(format: "%.1f", $0) } ?? "-",
                             r.accuracyDropAlone.map { String(format: "%.2f", $0) } ?? "-", r.note ?? ""]
                        }, rightAligned: [0, 5, 6, 7]))
            print("")
            if let a = fp32.accuracy, let b = quant.accuracy {
                print("held-out accuracy: fp32 \(percent(a)), \(model.precisionName) \(percent(b)) (\(String(format: "%+.2f", Double(b - a) * 100)) points)")
            }
            print("agreement with fp32: \(percent(quant.agreement)), output SQNR \(String(format: "%.1f", quant.sqnr)) dB")
            if let s = adaptiveSpec, let r = adaptiveResult {
                print("adaptive: threshold \(String(format: "%.4f", s.threshold)) on the top-1 margin; calibration rows: " +
                      "escalation \(s.escalationRate.map { percent(Float($0)) } ?? "-"), agreement \(s.agreement.map { percent(Float($0)) } ?? "-"); " +
                      "held out: accuracy \(r.accuracy.map(percent) ?? "-"), agreement \(percent(r.agreement))")
            }
            print("wrote \(output)")
        }
    }
}

extension CalibrationMethod: ExpressibleByArgument {}
