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
    @Test func quantileEdgesMergeTiesAndGuardConstantsAndTheRange() {
        // Feature 0 continuous, feature 1 mostly zeros, feature 2 constant.
        var values: [Float] = []
        for i in 0..<100 { values += [Float(i), i < 70 ? 0 : Float(i % 3 + 1), 7] }
        let b = FeatureBins.quantiles(values, features: 3, bins: 4)
        // A guard just below the minimum, one interior quantile, the maximum.
        #expect(b.binCounts == [4, 4, 3])
        #expect((b.bin(-1, feature: 1), b.bin(0, feature: 1), b.bin(2, feature: 1), b.bin(3, feature: 1), b.bin(4, feature: 1)) == (0, 1, 2, 2, 3))
        #expect(b.bin(7, feature: 2) == 1)
        #expect(b.bin(7.5, feature: 2) == 2)
        #expect(b.bin(6.5, feature: 2) == 0)
        #expect(b.bin(.nan, feature: 0) == 0)
        #expect(b.bin(1e30, feature: 0) == 3)
        var out = [UInt8](repeating: 9, count: 3)
        [Float(99), 0, 7].withUnsafeBufferPointer { b.bin($0.baseAddress!, into: &out) }
        #expect(out == [2, 1, 1])
    }

    @Test func valuesOutsideTheDataGetBinsOfTheirOwnAndBinsHoldEqualMass() {
        let b = FeatureBins.quantiles((0..<100).map(Float.init), features: 1, bins: 16)
        #expect(b.bin(-5, feature: 0) != b.bin(0, feature: 0))
        #expect(b.bin(200, feature: 0) != b.bin(99, feature: 0))
        var counts = [Int](repeating: 0, count: 16)
        for i in 0..<100 { counts[Int(b.bin(Float(i), feature: 0))] += 1 }
        // Interior bins hold 100/14 rows each, within one.
        for c in counts[1..<(b.binCounts[0] - 1)] { #expect(abs(Double(c) - 100.0 / 14) <= 1.5, "\(counts)") }
    }

    @Test func hostileValuesNeverMakeAnInvalidReference() {
        let values: [Float] = [-.greatestFiniteMagnitude, .nan, .infinity, -.greatestFiniteMagnitude]
        let b = FeatureBins.quantiles(values, features: 1, bins: 8)
        let finite = b.edges.prefix { $0.isFinite }
        #expect(!finite.isEmpty && zip(finite, finite.dropFirst()).allSatisfy { $0 < $1 })
        #expect(b.edges.allSatisfy { !$0.isNaN && $0 != -.infinity })
    }

    @Test func categoricalBinsAreClasses() {
        let b = FeatureBins.categorical(classes: 4)
        #expect((0..<4).map { b.bin(Float($0), feature: 0) } == [0, 1, 2, 3])
    }
}

@Suite struct ThresholdTests {
    @Test func episodesEndAfterAQuietStretch() {
        let s: [Double] = [0, 3, 2, 3, 0.4, 3, 0, 0]
        #expect(DriftCalibration.episodes(series: s, threshold: 2.5, quiet: 1) == 3)
        #expect(DriftCalibration.episodes(series: s, threshold: 2.5, quiet: 2) == 1)
        #expect(DriftCalibration.episodes(series: s, threshold: 1, quiet: 1) == 2)
        #expect(DriftCalibration.episodes(series: s, threshold: 3, quiet: 1) == 0)
    }

    @Test func thresholdIsTheSmallestThatMeetsTheRunLength() {
        var rng = SeededGenerator(seed: 5)
        let s = (0..<20_000).map { _ in Double(rng.nextGaussian()) }
        let t = DriftCalibration.threshold(series: s, runLength: 1_000, quiet: 4)
        #expect(DriftCalibration.episodes(series: s, threshold: t, quiet: 4) <= 20)
        #expect(DriftCalibration.episodes(series: s, threshold: t * 0.98, quiet: 4) > 20 || t < 1e-6)
        // Every threshold above the one chosen passes too (no 'always on' region chosen).
        for k in 1...20 { #expect(DriftCalibration.episodes(series: s, threshold: t * (1 + Double(k) / 10), quiet: 4) <= 20) }
    }
}

@Suite struct DetectorStateTests {
    /// One binary input feature, reference half and half; signal A alarms at `threshold`, B never alarms.
    static func detector(threshold: Double, silent: Double = 0.001) -> DriftDetector {
        let bins = FeatureBins(features: 1, maxBins: 2, edges: [0.5])
        let reference = DriftReference(
            alpha: 0.5, rows: 100, calibrationRows: 0, testRows: 0, falseAlarmRun: 100, verifiedRunLength: nil,
            signals: [SignalSpec(name: "a", source: .input, aggregate: .max, window: 4, threshold: threshold),
                      SignalSpec(name: "b", source: .input, aggregate: .sum, window: 4, threshold: silent, alarms: false)],
            sources: [.input: SourceReference(bins: bins, counts: [50, 50])], embeddingLayer: nil, directions: nil)
        return DriftDetector(reference: reference, classes: 2, scoresAreProbabilities: true)
    }

    static func push(_ d: DriftDetector, _ bins: [UInt8]) -> [DriftTransition] {
        bins.compactMap { b in [b].withUnsafeBufferPointer { d.observe($0.baseAddress!) } }
    }

    @Test func oneAlarmPerEpisodeClearedAfterAQuietWindow() {
        let d = Self.detector(threshold: 0.3)
        #expect(Self.push(d, [0, 1, 0, 1]).isEmpty && d.state == .ok)
        // All zeros: KL = 0.9·ln 1.8 + 0.1·ln 0.2 ≈ 0.368 > 0.3 once the window is all zeros.
        let up = Self.push(d, [0, 0, 0, 0, 0, 0, 0])
        #expect(up.count == 1 && d.state == .drift)
        if case .detected(let signal, let score, _, let top)? = up.first {
            #expect(signal == "a" && abs(score - (0.9 * log(1.8) + 0.1 * log(0.2))) < 1e-9 && top.first?.feature == 0)
        }
        // Back to balanced rows: it clears only after four quiet samples in a row.
        let down = Self.push(d, [1, 0, 1, 0, 1, 0])
        #expect(down == [.cleared] && d.state != .drift)
        // The silent signal is far over its threshold all along and never raised anything.
        #expect(Self.push(Self.detector(threshold: 100), [0, 0, 0, 0, 0, 0, 0, 0]).isEmpty)
    }

    @Test func warningIsAboveHalfTheThreshold() {
        let d = Self.detector(threshold: 0.7)
        _ = Self.push(d, [0, 0, 0, 0])
        #expect(d.state == .warning)
    }

    @Test func restoredWindowsScoreLikeTheOriginal() {
        let a = Self.detector(threshold: 10), b = Self.detector(threshold: 10)
        var rng = SeededGenerator(seed: 4)
        let first = (0..<30).map { _ in UInt8(rng.next() % 2) }
        _ = Self.push(a, first)
        b.restore(windows: a.windowContents(), state: .ok, samples: a.samples)
        let more = (0..<10).map { _ in UInt8(rng.next() % 2) }
        _ = Self.push(a, more)
        _ = Self.push(b, more)
        #expect(a.samples == b.samples && abs(a.scores[0] - b.scores[0]) < 1e-12 && abs(a.scores[1] - b.scores[1]) < 1e-12)
    }

    @Test func confidenceOfLogits() {
        let (top, c) = [Float(0), Float(log(3.0))].withUnsafeBufferPointer { SampleBinner.confidence($0.baseAddress!, classes: 2, probabilities: false) }
        #expect(top == 1 && abs(c - 0.75) < 1e-6)
    }
}
