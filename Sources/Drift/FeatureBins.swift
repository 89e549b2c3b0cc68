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
    /// The edges again, each feature's padded with +∞ to whole 16-lane vectors, for binning.
    private let packed: PackedEdges

    public init(features: Int, maxBins: Int, edges: [Float]) {
        precondition(features >= 1 && maxBins >= 2 && maxBins <= 256 && edges.count == features * (maxBins - 1))
        self.features = features
        self.maxBins = maxBins
        self.edges = edges
        binCounts = (0..<features).map { f in 1 + edges[(f * (maxBins - 1))..<((f + 1) * (maxBins - 1))].count { $0.isFinite } }
        packed = PackedEdges(edges, features: features, width: maxBins - 1)
    }

    public static func == (a: FeatureBins, b: FeatureBins) -> Bool {
        a.features == b.features && a.maxBins == b.maxBins && a.edges == b.edges
    }

    /// Edges at the data's quantiles (equal-mass bins); duplicates merged, so a feature with few
    /// distinct values gets fewer bins. Two guard edges give values outside the data's range bins
    /// of their own: one just below the minimum and one at the maximum. A constant feature thus
    /// gets a narrow bin around its value with one bin each side, so any change in it shows.
    /// - Parameter values: `[rows, features]`, row-major.
    public static func quantiles(_ values: [Float], features: Int, bins: Int) -> FeatureBins {
        precondition(features >= 1 && bins >= 4 && values.count % features == 0 && !values.isEmpty)
        let rows = values.count / features
        let width = bins - 1
        var edges = [Float](repeating: .infinity, count: features * width)
        var column: [Float] = []
        column.reserveCapacity(rows)
        for f in 0..<features {
            // Non-finite values (an overflowing activation) take no part in the edges, and the
            // edges stay finite: a reference must always be a valid one.
            column.removeAll(keepingCapacity: true)
            for r in 0..<rows where values[r * features + f].isFinite { column.append(min(max(values[r * features + f], -1e37), 1e37)) }
            if column.isEmpty { column = [0] }
            column.sort()
            let rows = column.count
            let lo = column[0], hi = column[rows - 1]
            let below = lo - max(abs(lo) * 1e-6, 1e-6)
            var chosen: [Float] = [below]
            if lo == hi {
                chosen.append(lo + max(abs(lo) * 1e-6, 1e-6))
            } else {
                // bins − 3 interior edges between the two guards.
                let inner = bins - 2
                for i in 1..<inner {
                    let e = column[min(rows - 1, i * rows / inner)]
                    if e < hi, e > chosen.last! { chosen.append(e) }
                }
                chosen.append(hi)
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

    /// Bins `features` values into `out`: per feature, one 16-lane compare per 16 edges.
    @inline(__always)
    public func bin(_ x: UnsafePointer<Float>, into out: UnsafeMutablePointer<UInt8>) {
        let chunks = packed.chunks
        var e = UnsafeRawPointer(packed.base)
        let one = SIMD16<Int32>(repeating: 1), zero = SIMD16<Int32>(repeating: 0)
        for f in 0..<features {
            let v = SIMD16<Float>(repeating: x[f])
            var below = zero
            for _ in 0..<chunks {
                below &+= zero.replacing(with: one, where: e.load(as: SIMD16<Float>.self) .< v)
                e += 64
            }
            out[f] = UInt8(truncatingIfNeeded: below.wrappedSum())
        }
    }

    /// Per-feature bin counts of binned rows `[rows, features]`.
    public func histogram(_ binned: [UInt8]) -> [Float] {
        var counts = [Float](repeating: 0, count: features * maxBins)
        for (i, b) in binned.enumerated() { counts[(i % features) * maxBins + Int(b)] += 1 }
        return counts
    }
}

/// Edges in 64-byte aligned 16-lane groups, +∞ where a feature has fewer.
final class PackedEdges: @unchecked Sendable {
    let base: UnsafeMutablePointer<Float>
    let chunks: Int

    init(_ edges: [Float], features: Int, width: Int) {
        chunks = (width + 15) / 16
        let stride = chunks * 16
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(1, features * stride) * 4, alignment: 64)
        base = raw.bindMemory(to: Float.self, capacity: features * stride)
        base.initialize(repeating: .infinity, count: features * stride)
        for f in 0..<features {
            for i in 0..<width { base[f * stride + i] = edges[f * width + i] }
        }
    }

    deinit { base.deallocate() }
}
