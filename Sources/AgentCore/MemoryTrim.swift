import Foundation
import Serving

#if canImport(Glibc)
import Glibc
#endif

/// Gives back what only start-up needed. A Swift daemon maps tens of megabytes of code (its own
/// binary, the Swift runtime, Foundation, ICU); start-up touches code all over it — argument and
/// TOML parsing, database migrations, model validation, INT8 calibration — and the kernel's
/// fault-around maps whole neighbourhoods of each touched page. None of that is used again, yet it
/// stays resident (and is charged to the service's cgroup) until memory pressure evicts it.
///
/// `release()` runs once agentd is ready: `madvise(MADV_PAGEOUT)` on every read-only file-backed
/// mapping of the process (the kernel skips pages other processes also map), then `malloc_trim`.
/// Pages serving uses come back on first use; measured on the digits model, resident memory goes
/// from 44 MB to the serving working set (README, "agentd figures"). Kernels before 5.4 have no
/// MADV_PAGEOUT; there the call does nothing.
enum MemoryTrim {
    struct Outcome: Sendable {
        var mappings = 0
        var bytes = 0
        var refused = 0
        var rssBeforeKB = 0
        var rssAfterKB = 0
    }

    static let madvPageout: Int32 = 21

    static func release() -> Outcome {
        var outcome = Outcome()
        outcome.rssBeforeKB = residentKB()
        guard let maps = try? String(contentsOfFile: "/proc/self/maps", encoding: .utf8) else { return outcome }
        for line in maps.split(separator: "\n") {
            // address perms offset dev inode path
            let fields = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
            guard fields.count == 6, fields[1].hasPrefix("r"), !fields[1].contains("w"),
                  fields[5].trimmingCharacters(in: .whitespaces).hasPrefix("/") else { continue }
            let range = fields[0].split(separator: "-")
            guard range.count == 2, let start = UInt(range[0], radix: 16), let end = UInt(range[1], radix: 16), end > start else { continue }
            outcome.mappings += 1
            if madvise(UnsafeMutableRawPointer(bitPattern: start), Int(end - start), madvPageout) == 0 {
                outcome.bytes += Int(end - start)
            } else {
                outcome.refused += 1
            }
        }
        mallocTrim()
        outcome.rssAfterKB = residentKB()
        return outcome
    }

    static func mallocTrim() { ProcessMemory.mallocTrim() }
    static func residentKB() -> Int { ProcessMemory.residentBytes() / 1024 }
}
