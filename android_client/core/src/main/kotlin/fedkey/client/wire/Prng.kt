package fedkey.client.wire

/**
 * The reproducible random streams of wire format v1 (WIRE_FORMAT.md §2): SplitMix64 on 64-bit integers.
 *
 * All arithmetic is modulo 2^64 on [Long] (two's complement wrap-around is exactly that); shifts are
 * unsigned (`ushr`). Seeds are plain 64-bit values: a seed printed as an unsigned decimal can be read with
 * `"18364758544493064720".toULong().toLong()`.
 */
object Prng {
    const val GOLDEN: Long = -0x61c8864680b583ebL // 0x9E3779B97F4A7C15
    private const val M1: Long = -0x40a7b892e31b1a47L // 0xBF58476D1CE4E5B9
    private const val M2: Long = -0x6b2fb644ecceee15L // 0x94D049BB133111EB

    /** Sub-stream purposes: the v of derive(seed, v). */
    const val STREAM_MASK = 1L
    const val STREAM_SIGNS = 2L
    const val STREAM_ROUNDING = 3L
    const val STREAM_NOISE = 4L
    const val STREAM_SHARED = 5L
    const val STREAM_PRIVATE = 6L

    fun mix64(z0: Long): Long {
        var z = (z0 xor (z0 ushr 30)) * M1
        z = (z xor (z ushr 27)) * M2
        return z xor (z ushr 31)
    }

    fun derive(key: Long, value: Long): Long = mix64(key xor mix64(value))

    /** Output j (0-based) of the stream keyed by [key]. */
    fun output(key: Long, j: Long): Long = mix64(key + (j + 1) * GOLDEN)

    /** Uniform double in [0, 1): (r ushr 11) · 2⁻⁵³, exact. */
    fun toUniform(r: Long): Double = (r ushr 11).toDouble() * TWO_POW_MINUS_53

    /** +1.0 if the top bit of r is 0, else −1.0. */
    fun toSign(r: Long): Double = if (r < 0) -1.0 else 1.0

    /** floor(r · n / 2⁶⁴) for 0 < n < 2³² (the high 64 bits of the 128-bit product), without overflow. */
    fun toBounded(r: Long, n: Long): Long {
        require(n in 1 until (1L shl 32)) { "bound must be in [1, 2^32), got $n" }
        val hi = r ushr 32
        val lo = r and 0xFFFFFFFFL
        return (hi * n + ((lo * n) ushr 32)) ushr 32
    }

    /** The simulator's (shared, private) seeds of a phone in a round (§2.3). */
    fun simulationSeeds(runSeed: Long, phoneId: Long, round: Long): Pair<Long, Long> {
        val base = derive(derive(runSeed, phoneId), round)
        return derive(base, STREAM_SHARED) to derive(base, STREAM_PRIVATE)
    }

    private const val TWO_POW_MINUS_53 = 1.0 / (1L shl 53).toDouble()
}
