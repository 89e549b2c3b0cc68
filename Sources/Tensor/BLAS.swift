import CBLAS

/// The few BLAS calls the engine makes, with Swift names and row-major order.
public enum BLAS {
    /// The agent owns its threads: OpenBLAS must not start a pool of its own.
    public static func useSingleThread() {
        openblas_set_num_threads(1)
    }

    /// Runs `body` with denormal floats flushed to zero on the calling thread (training ran 2×
    /// slower without), then restores the thread's previous floating-point mode. Scoped because
    /// the mode is per thread and Swift concurrency shares threads: left set, it leaked into
    /// whatever ran next on the thread — Foundation's JSONDecoder then refused valid JSON with
    /// a subnormal number, and inference would have read subnormal inputs as zero.
    public static func withDenormalsFlushedToZero<T>(_ body: () throws -> T) rethrows -> T {
        let saved = edge_flush_denormals_to_zero()
        defer { edge_restore_fp_control(saved) }
        return try body()
    }

    /// C[m×n] = alpha · op(A) · op(B) + beta · C, all row-major.
    /// `op(A)` is m×k (A is k×m when `transA`), `op(B)` is k×n (B is n×k when `transB`).
    @inline(__always)
    public static func gemm(
        transA: Bool = false, transB: Bool = false,
        m: Int, n: Int, k: Int,
        alpha: Float = 1,
        a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int,
        beta: Float = 0,
        c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        cblas_sgemm(
            CblasRowMajor,
            transA ? CblasTrans : CblasNoTrans,
            transB ? CblasTrans : CblasNoTrans,
            blasint(m), blasint(n), blasint(k),
            alpha, a, blasint(lda), b, blasint(ldb),
            beta, c, blasint(ldc))
    }

    /// y[m] = alpha · A[m×n] · x + beta · y (or Aᵀ·x with `trans`, then y has n elements).
    @inline(__always)
    public static func gemv(
        trans: Bool = false, m: Int, n: Int, alpha: Float = 1,
        a: UnsafePointer<Float>, lda: Int,
        x: UnsafePointer<Float>, beta: Float = 0,
        y: UnsafeMutablePointer<Float>
    ) {
        cblas_sgemv(
            CblasRowMajor, trans ? CblasTrans : CblasNoTrans,
            blasint(m), blasint(n), alpha, a, blasint(lda), x, 1, beta, y, 1)
    }

    /// y += alpha · x
    @inline(__always)
    public static func axpy(count: Int, alpha: Float, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        cblas_saxpy(blasint(count), alpha, x, 1, y, 1)
    }
}
