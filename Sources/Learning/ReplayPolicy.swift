import Foundation
import Tensor

/// Where a replay sample came from.
public enum ReplaySource: String, Codable, Sendable, CaseIterable {
    /// The labelled seed `agentctl model prepare` put in the model file.
    case seed
    /// Labelled feedback an accepted update learnt from.
    case feedback
    /// An unlabelled live input with the serving model's logits (distillation only).
    case live
}

/// How the labelled part of the replay memory chooses what to keep once it is full.
public enum ReplayPolicyKind: String, Codable, Sendable, CaseIterable {
    /// Class-balanced reservoir (Chrysakis & Moens, 2020): a newcomer of a class that is not
    /// "full" (never the largest) replaces a random sample of the largest class, which becomes
    /// full; one of a full class is kept with probability kept/seen of its class, in its own
    /// class's place.
    case classBalanced = "class_balanced"
    /// Plain reservoir sampling: every labelled sample seen is kept with equal probability.
    case reservoir
    /// Value-scored: each sample carries loss + entropy under the model that saw it (hard,
    /// uncertain samples are worth more); a newcomer replaces the lowest-valued sample of the
    /// largest class when it is worth more.
    case valueScored = "value_scored"
}

/// One replay sample's bookkeeping (its input and logits live in storage, keyed by `id`).
public struct ReplayEntry: Equatable, Sendable {
    public var id: Int64
    /// Class index, nil for a live (unlabelled) sample.
    public var label: Int?
    /// The class it counts under for balancing: its label, else the predicted class.
    public var group: Int
    public var source: ReplaySource
    public var score: Float

    public init(id: Int64, label: Int?, group: Int, source: ReplaySource, score: Float) {
        self.id = id
        self.label = label
        self.group = group
        self.source = source
        self.score = score
    }
}

/// The replay memory's index and admission policy, independent of where samples are stored:
/// `offer` says whether a newcomer is kept and which samples it pushes out. Labelled samples and
/// unlabelled live samples share `capacity`; live ones are a reservoir of at most
/// `liveCapacity` and never push out a labelled sample, while a labelled newcomer pushes out a
/// live sample before any labelled one.
public struct ReplayIndex: Sendable {
    public let kind: ReplayPolicyKind
    public let capacity: Int
    public let liveCapacity: Int
    public private(set) var entries: [ReplayEntry] = []
    /// Labelled samples offered so far, in total and per class (reservoir probabilities).
    public private(set) var labelledSeen = 0
    public private(set) var seenPerClass: [Int: Int] = [:]
    public private(set) var liveSeen = 0
    /// Classes that are or have been the largest (class-balanced policy).
    public private(set) var fullClasses: Set<Int> = []
    private var rng: SeededGenerator

    public init(kind: ReplayPolicyKind, capacity: Int, liveShare: Double = 0.2, seed: UInt64 = 0x5EED) {
        self.kind = kind
        self.capacity = max(capacity, 1)
        liveCapacity = min(self.capacity, Int((Double(self.capacity) * liveShare).rounded(.down)))
        rng = SeededGenerator(seed: seed)
    }

    /// Restores the index from stored entries and its saved `counters` (without them the counts
    /// of samples seen start from what is kept).
    public mutating func restore(_ stored: [ReplayEntry], counters: [String: Int64] = [:]) {
        entries = stored
        var perClass: [Int: Int] = [:]
        for e in stored where e.label != nil { perClass[e.group, default: 0] += 1 }
        for (k, v) in counters where k.hasPrefix("seen_class_") {
            if let c = Int(k.dropFirst("seen_class_".count)) { perClass[c] = max(perClass[c] ?? 0, Int(v)) }
        }
        seenPerClass = perClass
        labelledSeen = max(Int(counters["seen_labelled"] ?? 0), stored.filter { $0.label != nil }.count)
        liveSeen = max(Int(counters["seen_live"] ?? 0), stored.filter { $0.label == nil }.count)
        fullClasses = Set(counters.compactMap { k, v in k.hasPrefix("full_class_") && v == 1 ? Int(k.dropFirst("full_class_".count)) : nil })
    }

    /// What `restore` needs besides the entries, to be saved with every change.
    public var counters: [String: Int64] {
        var out: [String: Int64] = ["seen_labelled": Int64(labelledSeen), "seen_live": Int64(liveSeen)]
        for (c, n) in seenPerClass { out["seen_class_\(c)"] = Int64(n) }
        for c in fullClasses { out["full_class_\(c)"] = 1 }
        return out
    }

    public var labelledCount: Int { entries.reduce(0) { $0 + ($1.label == nil ? 0 : 1) } }
    public var liveCount: Int { entries.count - labelledCount }

    /// Decides on a newcomer; when kept, the index already holds it (and not the evicted ones).
    /// - Returns: nil when it is not kept, else the ids it pushed out.
    public mutating func offer(_ e: ReplayEntry) -> [Int64]? {
        if e.label == nil { return offerLive(e) }
        labelledSeen += 1
        seenPerClass[e.group, default: 0] += 1
        if entries.count < capacity {
            entries.append(e)
            return []
        }
        // Full: a live sample makes room first.
        if let live = randomIndex(where: { $0.label == nil }) {
            return [replace(at: live, with: e)]
        }
        guard let victim = labelledVictim(for: e) else { return nil }
        return [replace(at: victim, with: e)]
    }

    private mutating func offerLive(_ e: ReplayEntry) -> [Int64]? {
        liveSeen += 1
        guard liveCapacity > 0 else { return nil }
        if liveCount < liveCapacity && entries.count < capacity {
            entries.append(e)
            return []
        }
        guard liveCount > 0 else { return nil }
        // Reservoir over the live stream: kept with probability (live kept)/(live seen).
        let keep = Double(liveCount) / Double(liveSeen)
        guard Double(rng.nextUnitFloat()) < keep, let i = randomIndex(where: { $0.label == nil }) else { return nil }
        return [replace(at: i, with: e)]
    }

    private mutating func labelledVictim(for e: ReplayEntry) -> Int? {
        switch kind {
        case .reservoir:
            let kept = labelledCount
            guard Double(rng.nextUnitFloat()) < Double(kept) / Double(labelledSeen) else { return nil }
            return randomIndex(where: { $0.label != nil })
        case .classBalanced:
            let (largest, counts) = largestClasses()
            fullClasses.formUnion(largest)
            if !fullClasses.contains(e.group) {
                return randomIndex(where: { $0.label != nil && largest.contains($0.group) })
            }
            let kept = counts[e.group] ?? 0, seen = seenPerClass[e.group] ?? 1
            guard Double(rng.nextUnitFloat()) < Double(kept) / Double(seen) else { return nil }
            return randomIndex(where: { $0.label != nil && $0.group == e.group })
        case .valueScored:
            let (largest, _) = largestClasses()
            var best: Int? = nil
            for (i, x) in entries.enumerated() where x.label != nil && largest.contains(x.group) {
                if best == nil || x.score < entries[best!].score { best = i }
            }
            guard let best, entries[best].score < e.score || !largest.contains(e.group) else { return nil }
            return best
        }
    }

    /// The classes with the most labelled samples, and the counts.
    private func largestClasses() -> (Set<Int>, [Int: Int]) {
        var counts: [Int: Int] = [:]
        for x in entries where x.label != nil { counts[x.group, default: 0] += 1 }
        let top = counts.values.max() ?? 0
        return (Set(counts.filter { $0.value == top }.keys), counts)
    }

    private mutating func randomIndex(where predicate: (ReplayEntry) -> Bool) -> Int? {
        let candidates = entries.indices.filter { predicate(entries[$0]) }
        guard !candidates.isEmpty else { return nil }
        return candidates[Int(rng.next() % UInt64(candidates.count))]
    }

    private mutating func replace(at i: Int, with e: ReplayEntry) -> Int64 {
        let old = entries[i].id
        entries[i] = e
        return old
    }

    /// Evicts down to the capacity (live samples first, then from the largest classes); returns
    /// the ids that went.
    public mutating func shrink() -> [Int64] {
        var gone: [Int64] = []
        while entries.count > capacity || liveCount > liveCapacity {
            let i: Int?
            if liveCount > 0 && (liveCount > liveCapacity || entries.count > capacity) {
                i = randomIndex(where: { $0.label == nil })
            } else {
                let (largest, _) = largestClasses()
                i = randomIndex(where: { $0.label != nil && largest.contains($0.group) })
            }
            guard let i else { break }
            gone.append(entries.remove(at: i).id)
        }
        return gone
    }

    /// Removes entries (a failed write is undone by restoring from storage instead).
    public mutating func remove(ids: Set<Int64>) {
        entries.removeAll { ids.contains($0.id) }
    }

    /// Samples kept per class (labelled) and per source.
    public var fill: (perClass: [Int: Int], perSource: [ReplaySource: Int]) {
        var c: [Int: Int] = [:], s: [ReplaySource: Int] = [:]
        for e in entries {
            if let l = e.label { c[l, default: 0] += 1 }
            s[e.source, default: 0] += 1
        }
        return (c, s)
    }
}

/// Loss + entropy of one row's logits (the value-scored policy's score): how much the model
/// that saw the sample still had to learn from it. Unlabelled rows score their entropy only.
public func replayValue(logits z: UnsafePointer<Float>, classes: Int, label: Int?) -> Float {
    var m = -Float.infinity
    for c in 0..<classes { m = max(m, z[c]) }
    guard m.isFinite else { return 0 }
    var sum: Float = 0
    for c in 0..<classes { sum += expf(z[c] - m) }
    let logSum = logf(sum)
    var entropy: Float = 0
    for c in 0..<classes {
        let lp = z[c] - m - logSum
        // A class whose probability underflows adds nothing (0·log 0 = 0, not NaN).
        let p = expf(lp)
        if p > 0 && lp.isFinite { entropy -= p * lp }
    }
    var value = entropy
    if let label, label >= 0, label < classes { value += logSum - (z[label] - m) }
    // Stored in a NOT NULL column: never NaN, never infinite.
    return value.isFinite ? min(value, 1e6) : 1e6
}
