import Foundation
import Inference
import ModelFile
import Tensor

/// Structured pruning: whole neurons of dense layers and whole output channels of conv2d layers
/// are removed, with the rows (filters) that make them and the columns (input channels) of the
/// next weighted layer that read them, so the result is a smaller network that runs faster on
/// the same dense kernels. The last weighted layer (the classes) is never pruned.
public enum Pruning {
    /// How a unit's importance is scored.
    public enum Importance: String, Sendable, CaseIterable, Codable {
        /// Σ|w| over the unit's incoming weights (Li et al., "Pruning Filters for Efficient
        /// ConvNets"): no data needed, blind to what the next layer does with the unit. The
        /// default: on digits it did as well as Taylor or better.
        case l1
        /// (Σ g·w)² over the unit's weights and bias, summed over mini-batches of training data
        /// (Molchanov et al., "Importance Estimation for Neural Network Pruning", 2019): the
        /// first-order estimate of the loss change when the unit is removed, which sees the whole
        /// network downstream.
        case taylor
    }

    /// A weighted layer whose output units can be removed, and the layer that reads them.
    public struct Site: Sendable, Equatable {
        public var layer: Int
        public var consumer: Int
        /// Output units (neurons or channels) now.
        public var units: Int
        /// Columns of the consumer's weight per unit: 1 for dense→dense, conv→conv (per input
        /// channel slice) and through global pooling; H·W when a flatten lies between.
        public var columnsPerUnit: Int
    }

    /// The prunable layers of a network: every dense or conv2d layer except the last weighted one,
    /// whose output reaches the next weighted layer through element-wise ops, pooling and flatten.
    public static func sites(_ network: Network) -> [Site] {
        var result: [Site] = []
        let layers = network.layers
        for (i, layer) in layers.enumerated() where layer.weight != nil {
            var j = i + 1
            var perUnit = 1
            var found: Int?
            walk: while j < layers.count {
                switch layers[j].kind {
                case .dense, .conv2d:
                    found = j
                    break walk
                case .flatten:
                    let s = layers[j].inputShape
                    if s.count == 3 { perUnit = s[1] * s[2] }
                case .globalavgpool:
                    perUnit = 1
                case .relu, .relu6, .leakyrelu, .maxpool2d, .avgpool2d:
                    break
                case .softmax:
                    break walk
                }
                j += 1
            }
            guard let consumer = found else { continue }
            // A flatten makes the columns channel-major: unit c owns columns c·H·W ..< (c+1)·H·W.
            if case .dense = layers[consumer].kind, layers[consumer].inputCount != layer.outputShape[0] * perUnit { continue }
            result.append(Site(layer: i, consumer: consumer, units: layer.outputShape[0], columnsPerUnit: perUnit))
        }
        return result
    }

    /// Per-unit importance of every site, from the weights alone (L1) or from gradients on `data` (Taylor).
    public static func importance(_ network: Network, sites: [Site], method: Importance, data: DataSet?, batchSize: Int = 64,
                                  maxRows: Int = 2048) -> [[Double]] {
        switch method {
        case .l1:
            return sites.map { site in
                let w = network.layers[site.layer].weight!
                let perUnit = w.count / site.units
                return (0..<site.units).map { u in (0..<perUnit).reduce(0.0) { $0 + Double(abs(w[u * perUnit + $1])) } }
            }
        case .taylor:
            guard let data, let labels = data.labels, data.count > 0 else { return importance(network, sites: sites, method: .l1, data: nil) }
            // Every layer's gradient, whatever the file's `trainable` list freezes.
            let graph = TrainingGraph(network: network, batchCapacity: batchSize, trainable: Set(network.parameters.map(\.name)))
            var scores = sites.map { [Double](repeating: 0, count: $0.units) }
            let rows = min(data.count, maxRows)
            // Rows spread evenly over the file, so a class-sorted CSV is sampled across its classes.
            let picked = (0..<rows).map { $0 * data.count / rows }
            let input = UnsafeMutablePointer<Float>.allocate(capacity: batchSize * data.featureCount)
            let y = UnsafeMutablePointer<Int32>.allocate(capacity: batchSize)
            defer { input.deallocate(); y.deallocate() }
            var start = 0
            while start < rows {
                let b = min(batchSize, rows - start)
                data.features.withUnsafeBufferPointer { f in
                    for j in 0..<b {
                        (input + j * data.featureCount).update(from: f.baseAddress! + picked[start + j] * data.featureCount, count: data.featureCount)
                    }
                }
                for j in 0..<b { y[j] = Int32(labels[picked[start + j]]) }
                _ = graph.lossAndGradients(input, labels: y, batch: b)
                for (s, site) in sites.enumerated() {
                    let layer = network.layers[site.layer]
                    let w = layer.weight!, g = graph.weightGrads[site.layer]!
                    let perUnit = w.count / site.units
                    for u in 0..<site.units {
                        var sum = 0.0
                        for k in (u * perUnit)..<((u + 1) * perUnit) { sum += Double(w[k]) * Double(g[k]) }
                        if let bias = layer.bias, let gb = graph.biasGrads[site.layer] { sum += Double(bias[u]) * Double(gb[u]) }
                        scores[s][u] += sum * sum
                    }
                }
                start += b
            }
            return scores
        }
    }

    /// The network with only the `keep` units (sorted indices) of each site; shapes re-derived by
    /// the model loader. Field sections (drift reference, EWC anchor, replay seed) are dropped:
    /// they describe the old layers.
    public static func apply(_ network: Network, sites: [Site], keep: [[Int]]) throws -> Network {
        var layers = network.copy().layers
        // Rows first (each site's own layer), then the consumer's columns; a layer may be both.
        for (site, kept) in zip(sites, keep) {
            precondition(!kept.isEmpty && kept.allSatisfy { $0 >= 0 && $0 < site.units }, "keep indices out of range")
            var l = layers[site.layer]
            let w = l.weight!
            let perUnit = w.count / site.units
            var rows: [Float] = []
            rows.reserveCapacity(kept.count * perUnit)
            for u in kept { rows.append(contentsOf: UnsafeBufferPointer(start: w.pointer + u * perUnit, count: perUnit)) }
            l.weight = Tensor(shape: [kept.count] + Array(w.shape.dropFirst()), values: rows)
            if let b = l.bias { l.bias = Tensor(shape: [kept.count], values: kept.map { b[$0] }) }
            layers[site.layer] = l
        }
        for (site, kept) in zip(sites, keep) {
            var c = layers[site.consumer]
            let w = c.weight!
            let outputs = w.shape[0]
            let inputs = w.count / outputs  // columns per output row
            let perColumnBlock = inputs / (site.units * site.columnsPerUnit) * site.columnsPerUnit  // dense: columnsPerUnit; conv: kh·kw
            var values: [Float] = []
            values.reserveCapacity(outputs * kept.count * perColumnBlock)
            for o in 0..<outputs {
                let row = w.pointer + o * inputs
                for u in kept { values.append(contentsOf: UnsafeBufferPointer(start: row + u * perColumnBlock, count: perColumnBlock)) }
            }
            var shape = w.shape
            if shape.count == 4 { shape[1] = kept.count } else { shape[1] = kept.count * site.columnsPerUnit }
            c.weight = Tensor(shape: shape, values: values)
            layers[site.consumer] = c
        }
        let pruned = Network(name: network.name, version: network.version, inputShape: network.inputShape, labels: network.labels,
                             preprocessing: network.preprocessing, layers: layers, trainable: network.trainable)
        // The loader derives every shape from the tensors and checks the result.
        let bytes = ModelWriter.encode(manifest: pruned.manifest(), tensors: pruned.tensorBlobs())
        let reloaded = Network(model: try ModelFile(bytes: bytes, path: network.name)).copy()
        reloaded.lineage = network.lineage
        return reloaded
    }

    /// Units a site of `units` keeps at `fraction`: rounded to a multiple of `multiple` (whole
    /// SIMD panels for the kernels), at least one multiple (or every unit), never more than it has.
    public static func keptUnits(_ units: Int, fraction: Double, multiple: Int = 1) -> Int {
        let n = Int((Double(units) * fraction).rounded())
        let m = max(1, multiple)
        let rounded = m == 1 ? n : (n + m / 2) / m * m
        return min(units, max(rounded, min(m, units), 1))
    }

    /// Parameter count if each site kept `fraction` of its units (at least one).
    public static func parameters(_ network: Network, sites: [Site], fraction: Double, multiple: Int = 1) -> Int {
        var outScale = [Int: Double](), inScale = [Int: Double]()
        for s in sites {
            let kept = Double(keptUnits(s.units, fraction: fraction, multiple: multiple))
            outScale[s.layer] = kept / Double(s.units)
            inScale[s.consumer] = kept / Double(s.units)
        }
        var total = 0.0
        for (i, l) in network.layers.enumerated() {
            guard let w = l.weight else { continue }
            total += Double(w.count) * (outScale[i] ?? 1) * (inScale[i] ?? 1) + Double(l.bias?.count ?? 0) * (outScale[i] ?? 1)
        }
        return Int(total.rounded())
    }

    /// The fraction of units every site keeps so the network has as close to `target` parameters
    /// as whole units allow (the count just under the target or the one just over, the nearer).
    public static func fraction(_ network: Network, sites: [Site], target: Int, multiple: Int = 1) -> Double {
        var low = 0.0, high = 1.0
        for _ in 0..<40 {
            let mid = (low + high) / 2
            if parameters(network, sites: sites, fraction: mid, multiple: multiple) > target { high = mid } else { low = mid }
        }
        let under = parameters(network, sites: sites, fraction: low, multiple: multiple)
        let over = parameters(network, sites: sites, fraction: high, multiple: multiple)
        return max(abs(over - target) < abs(target - under) ? high : low, 1e-9)
    }

    /// One pruning step: score, keep the best `fraction` of each site's units (at least one), rebuild.
    public static func prune(_ network: Network, fraction: Double, method: Importance, data: DataSet?, multiple: Int = 1) throws -> Network {
        let sites = sites(network)
        let scores = importance(network, sites: sites, method: method, data: data)
        let keep = zip(sites, scores).map { site, score -> [Int] in
            let n = keptUnits(site.units, fraction: fraction, multiple: multiple)
            // Highest scores kept; ties broken by index so the result is reproducible.
            let ranked = (0..<site.units).sorted { score[$0] != score[$1] ? score[$0] > score[$1] : $0 < $1 }
            return ranked.prefix(n).sorted()
        }
        return try apply(network, sites: sites, keep: keep)
    }

    /// The layers unstructured pruning masks: every weighted layer but the last.
    public static func maskableLayers(_ network: Network) -> [Int] {
        Array(network.layers.indices.filter { network.layers[$0].weight != nil }.dropLast())
    }

    /// The share of the maskable weights to zero so that `left` of all parameters stay non-zero.
    public static func maskSparsity(_ network: Network, left: Double) -> Double {
        let maskable = maskableLayers(network).reduce(0) { $0 + network.layers[$1].weight!.count }
        guard maskable > 0 else { return 0 }
        let zeros = Double(network.parameterCount) * (1 - left)
        return min(max(zeros / Double(maskable), 0), 0.999)
    }

    /// Unstructured magnitude pruning: the smallest |w| of every weighted layer but the last set
    /// to zero until `sparsity` of those weights are zero. Returns the masks (1 keep, 0 pruned).
    public static func magnitudeMasks(_ network: Network, sparsity: Double) -> [Int: [Float]] {
        let weighted = network.layers.indices.filter { network.layers[$0].weight != nil }
        var masks: [Int: [Float]] = [:]
        for i in weighted.dropLast() {
            let w = network.layers[i].weight!
            let magnitudes = (0..<w.count).map { abs(w[$0]) }.sorted()
            let cut = Int((Double(w.count) * sparsity).rounded(.down))
            guard cut > 0 else { continue }
            let threshold = magnitudes[cut - 1]
            var removed = 0
            masks[i] = (0..<w.count).map { k in
                if abs(w[k]) <= threshold && removed < cut { removed += 1; return 0 }
                return 1
            }
        }
        return masks
    }

    public static func applyMasks(_ network: Network, _ masks: [Int: [Float]]) {
        for (i, mask) in masks {
            let w = network.layers[i].weight!
            for k in 0..<w.count where mask[k] == 0 { w.pointer[k] = 0 }
        }
    }
}
