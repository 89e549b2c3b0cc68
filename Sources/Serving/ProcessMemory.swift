import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// This process's memory as the kernel sees it.
public enum ProcessMemory {
    /// glibc's malloc_trim (not in the Glibc module's headers; absent from musl, where nothing happens).
    public static func mallocTrim() {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_trim") else { return }
        typealias Trim = @convention(c) (Int) -> Int32
        _ = unsafeBitCast(symbol, to: Trim.self)(0)
    }

    /// Resident bytes (VmRSS of /proc/self/status); 0 where there is no /proc.
    public static func residentBytes() -> Int {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) else { return 0 }
        // "VmRSS:\t   1234 kB": a tab, then spaces that pad to 8 digits (none above 9.5 GiB).
        let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
        return (fields.count > 1 ? Int(fields[1]) ?? 0 : 0) * 1024
    }
}
