import Foundation
import Testing
import Tensor
@testable import Drift

@Suite struct SlidingKLTests {
    /// KL(window ‖ reference) straight from the definition, over the last `window` samples.
    static func direct(_ samples: [[UInt8]], feature f: Int, window: Int, bins: Int, reference: [Float], alpha: Double) -> Double {
        let recent = samples.suffix(window)
        var c = [Double](repeating: 0, count: bins)
        for s in recent { c[Int(s[f])] += 1 }
        let z = Double(recent.count) + Double(bins) * alpha
        let p = c.map { ($0 + alpha) / z }
        let rz = (0..<bins).reduce(0.0) { $0 + Double(reference[f * bins + $1]) } + Double(bins) * alpha
        let q = (0..<bins).map { (Double(reference[f * bins + $0]) + alpha) / rz }
        return Divergence.kl(p, q)
    }

    @Test(arguments: [(window: 8, alpha: 0.5), (window: 32, alpha: 0.1), (window: 1, alpha: 1.0)])
    func incrementalMatchesDirect(window: Int, alpha: Double) {
        let features = 3, bins = 5
        let edges: [Float] = [0, 1, 2, 3, 0, 1, .infinity, .infinity, -1, 0, 1, 2]
        let fb = FeatureBins(features: features, maxBins: bins, edges: edges)
        #expect(fb.binCounts == [5, 3, 5])
        var rng = SeededGenerator(seed: 3)
        let reference = (0..<(features * bins)).map { i in i % bins < fb.binCounts[i / bins] ? Float(rng.next() % 20) : 0 }
        let w = SlidingKL(bins: fb, referenceCounts: reference, window: window, alpha: alpha)
        var seen: [[UInt8]] = []
        for step in 0..<300 {
            let s = (0..<features).map { UInt8(rng.next() % UInt64(fb.binCounts[$0])) }
            seen.append(s)
            s.withUnsafeBufferPointer { w.push($0.baseAddress!) }
            for f in 0..<features {
                // Unused bins hold no mass in either distribution: compare over the used ones.
                let used = fb.binCounts[f]
                let local = seen.map { [$0[f]] }
                let d = Self.direct(local, feature: 0, window: window, bins: used,
                                    reference: Array(reference[(f * bins)..<(f * bins + used)]), alpha: alpha)
                #expect(abs(w.kl(feature: f) - d) < 1e-9, "step \(step) feature \(f)")
            }
        }
        let sum = (0..<features).reduce(0.0) { $0 + w.kl(feature: $1) }
        #expect(abs(w.score(.sum) - sum) < 1e-12)
        #expect(w.score(.max) == (0..<features).map { w.kl(feature: $0) }.max())
    }

    @Test func runningSumsStayExactOverManySamples() {
        let fb = FeatureBins(features: 1, maxBins: 4, edges: [0, 1, 2])
        let w = SlidingKL(bins: fb, referenceCounts: [5, 1, 1, 9], window: 16, alpha: 0.5)
        var rng = SeededGenerator(seed: 9)
        var seen: [[UInt8]] = []
        for _ in 0..<140_000 {
            let s: [UInt8] = [UInt8(rng.next() % 4)]
            seen.append(s)
            if seen.count > 64 { seen.removeFirst(32) }
            s.withUnsafeBufferPointer { w.push($0.baseAddress!) }
        }
        #expect(abs(w.kl(feature: 0) - Self.direct(seen, feature: 0, window: 16, bins: 4, reference: [5, 1, 1, 9], alpha: 0.5)) < 1e-9)
    }

    @Test func contentsComeBackOldestFirst() {
        let fb = FeatureBins(features: 2, maxBins: 3, edges: [0, 1, 0, 1])
        let w = SlidingKL(bins: fb, referenceCounts: [1, 1, 1, 1, 1, 1], window: 3, alpha: 0.5)
        for v: UInt8 in [0, 1, 2, 1] { [v, 2 - v].withUnsafeBufferPointer { w.push($0.baseAddress!) } }
        #expect(w.contents() == [1, 1, 2, 0, 1, 1])
    }
}

@Suite struct DivergenceTests {
    @Test func knownValues() {
        let p = [0.5, 0.5], q = [0.25, 0.75]
        #expect(abs(Divergence.kl(p, q) - (0.5 * log(2.0) + 0.5 * log(0.5 / 0.75))) < 1e-12)
        #expect(abs(Divergence.psi(p, q) - (0.25 * log(2.0) + -0.25 * log(0.5 / 0.75))) < 1e-12)
        #expect(Divergence.js(p, p) == 0)
        #expect(abs(Divergence.js([1, 0], [0, 1]) - log(2.0)) < 1e-12)
    }
}

@Suite struct FeatureBinsTests {
    @Test func quantileEdgesMergeTiesAndGuardConstants() {
        // Feature 0 continuous, feature 1 mostly zeros, feature 2 constant.
        var values: [Float] = []
        for i in 0..<100 { values += [Float(i), i < 70 ? 0 : Float(i % 3 + 1), 7] }
        let b = FeatureBins.quantiles(values, features: 3, bins: 4)
        #expect(b.binCounts[0] == 4)
        #expect(b.binCounts[1] == 3)  // edges 0 and one more: {≤0}, (0, 1], (1, …]
        #expect(b.binCounts[2] == 3)
        #expect(b.bin(7, feature: 2) == 1)
        #expect(b.bin(7.5, feature: 2) == 2)
        #expect(b.bin(6.5, feature: 2) == 0)
        #expect(b.bin(0, feature: 1) == 0)
        #expect(b.bin(.nan, feature: 0) == 0)
        #expect(b.bin(1e30, feature: 0) == 3)
        var out = [UInt8](repeating: 9, count: 3)
        [Float(99), 0, 7].withUnsafeBufferPointer { b.bin($0.baseAddress!, into: &out) }
        #expect(out == [3, 0, 1])
    }

    @Test func categoricalBinsAreClasses() {
        let b = FeatureBins.categorical(classes: 4)
        #expect((0..<4).map { b.bin(Float($0), feature: 0) } == [0, 1, 2, 3])
    }
}

@Suite struct ThresholdTests {
    @Test func episodesEndBelowHalfTheThreshold() {
        let s: [Double] = [0, 3, 2, 3, 0.4, 3, 0, 0]
        #expect(DriftCalibration.episodes(series: s, threshold: 2.5) == 2)
        #expect(DriftCalibration.episodes(series: s, threshold: 1) == 2)
        #expect(DriftCalibration.episodes(series: s, threshold: 3) == 0)
    }

    @Test func thresholdIsTheSmallestThatMeetsTheRunLength() {
        var rng = SeededGenerator(seed: 5)
        let s = (0..<20_000).map { _ in Double(rng.nextGaussian()) }
        let t = DriftCalibration.threshold(series: s, runLength: 1_000)
        #expect(DriftCalibration.episodes(series: s, threshold: t) <= 20)
        #expect(DriftCalibration.episodes(series: s, threshold: t * 0.98) > 20 || t < 1e-6)
    }
}
