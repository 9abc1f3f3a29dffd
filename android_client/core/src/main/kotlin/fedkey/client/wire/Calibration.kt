package fedkey.client.wire

import kotlin.math.abs
import kotlin.math.exp
import kotlin.math.expm1
import kotlin.math.ln
import kotlin.math.sqrt

/**
 * Local DP calibration as in the Python `privacy/calibration.py`, so a phone can read the server's pipeline
 * configuration in its (ε, δ) form: the analytic Gaussian mechanism (Balle & Wang 2018, Thm 8) and Laplace.
 * The σ found here agrees with Python's to ~1e-12 relative (independent root finders and erfc); the noise
 * itself is private randomness, so only the σ recorded in the message (informational) can differ in the last bits.
 */
object Calibration {
    /** log Φ(x), accurate in the far left tail. */
    fun logNdtr(x: Double): Double {
        val t = -x / sqrt(2.0)
        return when {
            t >= 2.0 -> ln(0.5) + logErfcLarge(t)
            t > -2.0 -> ln(0.5 * (1.0 - erf(t)))
            else -> Math.log1p(-0.5 * exp(logErfcLarge(-t)))
        }
    }

    /** erf(t) by the all-positive series 2/√π · e^{−t²} · Σ 2ⁿ t^{2n+1} / (1·3·…·(2n+1)), for |t| ≤ 2. */
    private fun erf(t: Double): Double {
        if (t < 0) return -erf(-t)
        var term = t
        var sum = t
        var n = 0
        while (term > sum * 1e-17) {
            n++
            term *= 2.0 * t * t / (2 * n + 1)
            sum += term
        }
        return 2.0 / sqrt(Math.PI) * exp(-t * t) * sum
    }

    /** ln erfc(t) for t ≥ 2 by the continued fraction e^{−t²}/√π · 1/(t + (1/2)/(t + 1/(t + (3/2)/(t + …)))) (Lentz). */
    private fun logErfcLarge(t: Double): Double {
        val tiny = 1e-300
        var f = t
        var c = t
        var d = 0.0
        var k = 1
        while (k < 5000) {
            val a = k / 2.0
            d = t + a * d
            if (abs(d) < tiny) d = tiny
            c = t + a / c
            if (abs(c) < tiny) c = tiny
            d = 1.0 / d
            val delta = c * d
            f *= delta
            if (abs(delta - 1.0) < 1e-16) break
            k++
        }
        return -t * t - 0.5 * ln(Math.PI) - ln(f)
    }

    /** Exact δ(ε) of the Gaussian mechanism with std [sigma] and L2 [sensitivity]. */
    fun gaussianDelta(sigma: Double, epsilon: Double, sensitivity: Double): Double {
        val a = sensitivity / (2.0 * sigma)
        val b = epsilon * sigma / sensitivity
        val logFirst = logNdtr(a - b)
        val logSecond = epsilon + logNdtr(-a - b)
        if (logSecond >= logFirst) return 0.0
        return exp(logFirst) * -expm1(logSecond - logFirst)
    }

    /** Smallest σ for which N(0, σ²) on an L2-sensitivity-Δ query is (ε, δ)-DP. */
    fun analyticGaussianSigma(epsilon: Double, delta: Double, sensitivity: Double): Double {
        require(epsilon > 0 && epsilon.isFinite()) { "epsilon must be a positive finite number, got $epsilon" }
        require(delta > 0 && delta < 1) { "delta must be in (0, 1), got $delta" }
        require(sensitivity > 0) { "sensitivity must be positive, got $sensitivity" }
        fun gap(logSigma: Double) = ln(gaussianDelta(exp(logSigma), epsilon, sensitivity) + 1e-300) - ln(delta)
        var lo = ln(sensitivity) - 10.0
        var hi = ln(sensitivity) + 10.0
        while (gap(hi) > 0) hi += 10.0
        repeat(200) {
            val mid = 0.5 * (lo + hi)
            if (gap(mid) > 0) lo = mid else hi = mid
            if (hi - lo <= 1e-15 * maxOf(1.0, abs(hi))) return@repeat
        }
        var sigma = exp(hi)
        while (gaussianDelta(sigma, epsilon, sensitivity) > delta) sigma = Math.nextUp(sigma) * (1 + 1e-12)
        return sigma
    }
}
