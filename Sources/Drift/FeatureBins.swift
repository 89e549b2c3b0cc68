/// Histogram bins for a group of features: per feature up to `maxBins − 1` increasing edges, the
/// rest padded with +∞. A value falls in bin `#{edges < value}`, so equal values always share a bin
/// and a value below every edge (or NaN) lands in bin 0.
public struct FeatureBins: Sendable, Equatable {
    public let features: Int
    public let maxBins: Int
    /// `[features, maxBins − 1]`.
    public let edges: [Float]
    /// Bins in use per feature: one more than its finite edges.
    public let binCounts: [Int]

    public init(features: Int, maxBins: Int, edges: [Float]) {
        precondition(features >= 1 && maxBins >= 2 && maxBins <= 256 && edges.count == features * (maxBins - 1))
        self.features = features
        self.maxBins = maxBins
        self.edges = edges
        binCounts = (0..<features).map { f in 1 + edges[(f * (maxBins - 1))..<((f + 1) * (maxBins - 1))].count { $0.isFinite } }
    }

    /// Edges at the data's quantiles (equal-mass bins); duplicates merged, so a feature with few
    /// distinct values gets fewer bins. A constant feature gets a narrow bin around its value with
    /// one bin each side, so any change in it shows.
    /// - Parameter values: `[rows, features]`, row-major.
    public static func quantiles(_ values: [Float], features: Int, bins: Int) -> FeatureBins {
        precondition(features >= 1 && bins >= 2 && values.count % features == 0 && !values.isEmpty)
        let rows = values.count / features
        let width = bins - 1
        var edges = [Float](repeating: .infinity, count: features * width)
        var column = [Float](repeating: 0, count: rows)
        for f in 0..<features {
            for r in 0..<rows { column[r] = values[r * features + f] }
            column.sort()
            var chosen: [Float] = []
            if column[0] == column[rows - 1] {
                let v = column[0], eps = max(abs(v) * 1e-6, 1e-6)
                chosen = [v - eps, v + eps]
            } else {
                for i in 1..<bins {
                    let e = column[min(rows - 1, i * rows / bins)]
                    // The top value is not an edge: nothing in the data would lie above it.
                    if e < column[rows - 1], chosen.last.map({ e > $0 }) ?? true { chosen.append(e) }
                }
                if chosen.isEmpty { chosen = [column[0]] }
            }
            for (i, e) in chosen.prefix(width).enumerated() { edges[f * width + i] = e }
        }
        return FeatureBins(features: features, maxBins: bins, edges: edges)
    }

    /// One feature holding a class index 0..<classes: one bin per class.
    public static func categorical(classes: Int) -> FeatureBins {
        precondition(classes >= 2 && classes <= 256)
        return FeatureBins(features: 1, maxBins: classes, edges: (0..<(classes - 1)).map { Float($0) + 0.5 })
    }

    @inline(__always)
    public func bin(_ x: Float, feature f: Int) -> UInt8 {
        let width = maxBins - 1
        return edges.withUnsafeBufferPointer { e in
            var b = 0
            let base = f * width
            for i in 0..<width where e[base + i] < x { b += 1 }
            return UInt8(truncatingIfNeeded: b)
        }
    }

    /// Bins `features` values into `out`.
    @inline(__always)
    public func bin(_ x: UnsafePointer<Float>, into out: UnsafeMutablePointer<UInt8>) {
        let width = maxBins - 1
        edges.withUnsafeBufferPointer { e in
            var base = 0
            for f in 0..<features {
                let v = x[f]
                var b = 0
                for i in 0..<width { b &+= e[base + i] < v ? 1 : 0 }
                out[f] = UInt8(truncatingIfNeeded: b)
                base += width
            }
        }
    }

    /// Per-feature bin counts of binned rows `[rows, features]`.
    public func histogram(_ binned: [UInt8]) -> [Float] {
        var counts = [Float](repeating: 0, count: features * maxBins)
        for (i, b) in binned.enumerated() { counts[(i % features) * maxBins + Int(b)] += 1 }
        return counts
    }
}
