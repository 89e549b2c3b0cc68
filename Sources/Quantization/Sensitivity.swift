import Inference
import Tensor
import Training

/// Scores of a plan on rows, and how they compare with a reference.
public struct PlanComparison: Codable, Sendable {
    public var accuracy: Float?
    public var agreement: Float
    public var sqnr: Double
}

public enum Sensitivity {
    public static func scores(_ plan: InferencePlan, _ rows: DataSet) -> [Float] { plan.predict(rows.features) }


    public static func compare(_ scores: [Float], reference: [Float], classes: Int, labels: [Int]?) -> PlanComparison {
        let n = scores.count / classes
        var agree = 0, correct = 0
        for i in 0..<n {
            let a = scores[(i * classes)..<((i + 1) * classes)].argmax()
            let b = reference[(i * classes)..<((i + 1) * classes)].argmax()
            if a == b { agree += 1 }
            if let labels, labels[i] == a { correct += 1 }
        }
        return PlanComparison(accuracy: labels.map { _ in Float(correct) / Float(max(n, 1)) }, agreement: Float(agree) / Float(max(n, 1)),
                              sqnr: sqnr(reference, scores))
    }

    /// Each weighted layer quantized alone (the rest FP32): output SQNR in dB and accuracy drop in points.
    public static func perLayer(_ network: Network, activations: [String: QuantParams], heldOut: DataSet,
                                precision: (Int) -> LayerPrecision, method: CalibrationMethod, calibrationRows: Int,
                                reduceRange: Bool = false)
        -> [Int: (sqnr: Double, drop: Float)] {
        let reference = ExecutionPlan(network: network, batchCapacity: 64).predict(heldOut.features)
        let base = compare(reference, reference: reference, classes: network.outputCount, labels: heldOut.labels)
        var out: [Int: (Double, Float)] = [:]
        for l in Quantizer.weightedLayers(network) {
            let model = Quantizer.build(network, activations: activations, precisions: [l: precision(l)], method: method,
                                        calibrationRows: calibrationRows, reduceRange: reduceRange)
            let s = QuantizedPlan(model: model, batchCapacity: 64, adaptive: .off).predict(heldOut.features)
            let c = compare(s, reference: reference, classes: network.outputCount, labels: heldOut.labels)
            out[l] = (c.sqnr, ((base.accuracy ?? 0) - (c.accuracy ?? 0)) * 100)
        }
        return out
    }

    /// `--precision auto`: everything integer, then the most sensitive layers back to FP32 one at a
    /// time (largest accuracy drop alone first, lowest SQNR breaking ties) until the held-out
    /// accuracy is within `budget` points of FP32.
    public static func autoPrecision(_ network: Network, activations: [String: QuantParams], heldOut: DataSet, budget: Float,
                                     preferred: (Int) -> LayerPrecision, method: CalibrationMethod, calibrationRows: Int,
                                     reduceRange: Bool = false)
        -> (precisions: [Int: LayerPrecision], sensitivity: [Int: (sqnr: Double, drop: Float)]) {
        let sensitivity = perLayer(network, activations: activations, heldOut: heldOut, precision: preferred, method: method,
                                   calibrationRows: calibrationRows, reduceRange: reduceRange)
        let reference = ExecutionPlan(network: network, batchCapacity: 64).predict(heldOut.features)
        let fp32 = compare(reference, reference: reference, classes: network.outputCount, labels: heldOut.labels).accuracy ?? 0
        var precisions = Dictionary(uniqueKeysWithValues: Quantizer.weightedLayers(network).map { ($0, preferred($0)) })
        let order = sensitivity.keys.sorted {
            let a = sensitivity[$0]!, b = sensitivity[$1]!
            return a.drop != b.drop ? a.drop > b.drop : a.sqnr < b.sqnr
        }
        for l in [nil] + order.map(Optional.some) {
            if let l { precisions[l] = .fp32 }
            let model = Quantizer.build(network, activations: activations, precisions: precisions, method: method,
                                        calibrationRows: calibrationRows, reduceRange: reduceRange)
            let s = QuantizedPlan(model: model, batchCapacity: 64, adaptive: .off).predict(heldOut.features)
            let acc = compare(s, reference: reference, classes: network.outputCount, labels: heldOut.labels).accuracy ?? 0
            if (fp32 - acc) * 100 <= budget { break }
        }
        return (precisions, sensitivity)
    }

    /// The smallest top-1 margin threshold that brings agreement with FP32 to `targetAgreement`
    /// while escalating at most `maxEscalation` of the rows; if both cannot hold, the threshold
    /// that escalates exactly `maxEscalation`.
    public static func adaptiveThreshold(quantized: [Float], reference: [Float], classes: Int,
                                         targetAgreement: Double = 0.995, maxEscalation: Double = 0.10) -> AdaptivePrecision {
        let n = quantized.count / classes
        var rows: [(margin: Float, agrees: Bool)] = []
        for i in 0..<n {
            let q = quantized[(i * classes)..<((i + 1) * classes)]
            let margin = q.withContiguousStorageIfAvailable { QuantizedPlan.margin($0.baseAddress!, classes) } ?? 0
            rows.append((margin, q.argmax() == reference[(i * classes)..<((i + 1) * classes)].argmax()))
        }
        rows.sort { $0.margin < $1.margin }
        var disagreeAbove = rows.filter { !$0.agrees }.count
        // Escalating the e lowest-margin rows makes them agree.
        for e in 0...n {
            if e > 0, !rows[e - 1].agrees { disagreeAbove -= 1 }
            let agreement = Double(n - disagreeAbove) / Double(max(n, 1))
            let rate = Double(e) / Double(max(n, 1))
            let threshold: Float = e == 0 ? 0 : (e < n ? (rows[e - 1].margin + rows[e].margin) / 2 : .infinity)
            if agreement >= targetAgreement || rate >= maxEscalation || e == n {
                return AdaptivePrecision(mode: .auto, threshold: threshold.isFinite ? threshold : 1, escalationRate: rate, agreement: agreement)
            }
        }
        return AdaptivePrecision(mode: .auto, threshold: 0, escalationRate: 0, agreement: 1)
    }
}
