package fedkey.client.wire

import fedkey.client.Json
import fedkey.client.asObject
import kotlin.math.roundToLong
import kotlin.math.sqrt

/**
 * The configured update pipeline, one entry per stage in phone order (WIRE_FORMAT.md §1, §3.1).
 * It mirrors the Python `PipelineConfig` (the same `kind` names and fields), so the stage list the
 * server puts in a round's configuration can be handed to [StageConfig.listFromJson] unchanged.
 */
sealed class StageConfig {
    abstract val kind: String

    /** Scale the delta to norm ≤ [norm] (L2 if [ord] = 2, L1 if 1). [adaptive]: quantile clipping (sends a bit). */
    data class Clip(val norm: Double, val ord: Int = 2, val adaptive: Boolean = false) : StageConfig() {
        override val kind get() = "clip"
    }

    /** Local DP: add N(0, σ²) per value; [noiseMultiplier] = σ / Δ₂ (Δ₂ = 2C) is recorded for the server's ledger. */
    data class GaussianNoise(val sigma: Double, val noiseMultiplier: Double) : StageConfig() {
        override val kind get() = "gaussian_noise"
    }

    /** Local DP: add Laplace(b) per value; [noiseMultiplier] = b / Δ₁. */
    data class LaplaceNoise(val scale: Double, val noiseMultiplier: Double) : StageConfig() {
        override val kind get() = "laplace_noise"
    }

    /** Keep a seed-derived random subset of k values (give [k] or [fraction]); the server rescales by d/k if [unbiased]. */
    data class RandomK(val k: Int? = null, val fraction: Double? = null, val unbiased: Boolean = true) : StageConfig() {
        override val kind get() = "random_k"
        fun kept(dim: Int): Int = keptOf(k, fraction, dim)
    }

    /** Keep the k largest-magnitude values (give [k] or [fraction]); their indices travel in the message. */
    data class TopK(val k: Int? = null, val fraction: Double? = null) : StageConfig() {
        override val kind get() = "top_k"
        fun kept(dim: Int): Int = keptOf(k, fraction, dim)
    }

    /** Add what compression dropped last round (the residual the encoder returns) before compressing. */
    data object ErrorFeedback : StageConfig() {
        override val kind get() = "error_feedback"
    }

    /** Random signs + block Hadamard transform with blocks of [block] (a power of two, 2 … 65536). */
    data class Rotate(val block: Int = 1024) : StageConfig() {
        override val kind get() = "rotate"
    }

    /** Unbiased stochastic [bits]-bit quantization (1, 2, 4 or 8) with a float32 (lo, scale) per [chunk] values. */
    data class Quantize(val bits: Int = 4, val chunk: Int = 512) : StageConfig() {
        override val kind get() = "quantize"
    }

    companion object {
        internal fun keptOf(k: Int?, fraction: Double?, dim: Int): Int {
            if ((k == null) == (fraction == null)) throw PipelineInputError("give exactly one of k or fraction")
            if (k != null) return k
            // Python's round() is round-half-to-even, as is Math.rint.
            return minOf(dim.toLong(), maxOf(1L, Math.rint(fraction!! * dim).roundToLong())).toInt()
        }

        /**
         * Parse the JSON stage list of the Python config (e.g. `[{"kind": "clip", "norm": 1.0}, {"kind": "quantize", "bits": 4}]`).
         * Noise stages take the Python form — gaussian `epsilon` + `delta` (analytic Gaussian σ for Δ₂ = 2C, see
         * [Calibration]), laplace `epsilon` (b = Δ₁/ε, Δ₁ = 2C for an L1 clip, 2C·√m for an L2 clip over the m
         * noised values) — or an explicit `sigma`/`scale` plus `noise_multiplier`.
         */
        fun listFromJson(json: String): List<StageConfig> =
            (Json.parse(json) as? List<*> ?: throw PipelineInputError("the pipeline must be a JSON array"))
                .map { fromMap(it.asObject("stage")) }

        fun fromMap(m: Map<String, Any?>): StageConfig {
            fun num(key: String): Double? = when (val v = m[key]) {
                null -> null; is Long -> v.toDouble(); is Double -> v
                else -> throw PipelineInputError("stage field '$key' must be a number")
            }
            fun int(key: String): Int? = when (val v = m[key]) {
                null -> null; is Long -> v.toInt()
                else -> throw PipelineInputError("stage field '$key' must be an integer")
            }
            fun bool(key: String, default: Boolean): Boolean = when (val v = m[key]) {
                null -> default; is Boolean -> v
                else -> throw PipelineInputError("stage field '$key' must be true or false")
            }
            return when (val kind = m["kind"]) {
                "clip" -> Clip(num("norm") ?: throw PipelineInputError("clip needs 'norm'"), int("ord") ?: 2,
                    m["adaptive"].let { it is Map<*, *> || it == true })
                "gaussian_noise" -> {
                    val eps = num("epsilon")
                    if (eps != null) GaussianEpsilon(eps, num("delta") ?: throw PipelineInputError("gaussian_noise needs 'delta'"))
                    else GaussianNoise(
                        num("sigma") ?: num("scale") ?: throw PipelineInputError("gaussian_noise needs 'epsilon' and 'delta', or 'sigma'"),
                        num("noise_multiplier") ?: throw PipelineInputError("gaussian_noise needs 'noise_multiplier'"),
                    )
                }
                "laplace_noise" -> {
                    val eps = num("epsilon")
                    if (eps != null) LaplaceEpsilon(eps) else LaplaceNoise(
                        num("scale") ?: throw PipelineInputError("laplace_noise needs 'scale' or 'epsilon'"),
                        num("noise_multiplier") ?: throw PipelineInputError("laplace_noise needs 'noise_multiplier'"),
                    )
                }
                "random_k" -> RandomK(int("k"), num("fraction"), bool("unbiased", true))
                "top_k" -> TopK(int("k"), num("fraction"))
                "error_feedback" -> ErrorFeedback
                "rotate" -> Rotate(int("block") ?: 1024)
                "quantize" -> Quantize(int("bits") ?: 4, int("chunk") ?: 512)
                else -> throw PipelineInputError("unknown stage kind $kind")
            }
        }
    }

    /** Gaussian noise given by (ε, δ); σ is calibrated (analytic Gaussian, Δ₂ = 2C) when the pipeline is built. */
    data class GaussianEpsilon(val epsilon: Double, val delta: Double) : StageConfig() {
        override val kind get() = "gaussian_noise"
    }

    /** Laplace noise given by ε; calibrated to the clip bound when the pipeline is built. */
    data class LaplaceEpsilon(val epsilon: Double) : StageConfig() {
        override val kind get() = "laplace_noise"
    }
}

internal val NOISE_KINDS = setOf("gaussian_noise", "laplace_noise")
private val SPARSIFIER_KINDS = listOf("random_k", "top_k")
private val SAFE_BEFORE_NOISE = setOf("clip", "random_k", "rotate")

/** Ordering and DP-safety rules of §3.1; throws [IllegalArgumentException] with the reason. */
internal fun checkStageOrder(kinds: List<String>, adaptiveClip: Boolean) {
    val pos = HashMap<String, Int>()
    kinds.forEachIndexed { i, k ->
        if (k in pos) throw IllegalArgumentException("stage '$k' appears twice")
        pos[k] = i
    }
    if ("clip" in pos && pos["clip"] != 0) throw IllegalArgumentException("clip must be the first stage")
    if (SPARSIFIER_KINDS.count { it in pos } > 1) throw IllegalArgumentException("use at most one sparsifier (random_k or top_k)")
    if (NOISE_KINDS.count { it in pos } > 1) throw IllegalArgumentException("use at most one local noise stage")
    if ("quantize" in pos && pos["quantize"] != kinds.size - 1) throw IllegalArgumentException("quantize must be the last stage")
    val sparsifier = SPARSIFIER_KINDS.firstNotNullOfOrNull { pos[it] }
    if ("rotate" in pos && sparsifier != null && pos.getValue("rotate") < sparsifier) {
        throw IllegalArgumentException("rotate must come after the sparsifier")
    }
    pos["error_feedback"]?.let { ef ->
        val before = listOf("random_k", "top_k", "rotate", "quantize").firstOrNull { it in pos && pos.getValue(it) < ef }
        if (before != null) throw IllegalArgumentException("error_feedback must come before $before")
    }
    val noise = NOISE_KINDS.mapNotNull { pos[it] }.firstOrNull() ?: return
    if ("clip" !in pos) throw IllegalArgumentException("local DP noise needs a clip stage before it")
    if (adaptiveClip) throw IllegalArgumentException("DP safety rule: adaptive clipping cannot be combined with local DP")
    for (k in kinds.subList(0, noise)) {
        if (k !in SAFE_BEFORE_NOISE) {
            throw IllegalArgumentException("DP safety rule: '$k' before the local DP noise stage would leak the un-noised delta")
        }
    }
}

/** A runtime stage bound to its input length: its wire record and the lengths it maps. */
internal sealed class Stage(val code: Int, val kind: String, val inLen: Int, val outLen: Int) {
    abstract fun params(withinClip: Boolean): ByteArray
    abstract fun describe(): Map<String, Any>

    class Clip(len: Int, val norm: Float, val ord: Int, val adaptive: Boolean) : Stage(1, "clip", len, len) {
        init {
            if (!(norm.isFinite() && norm > 0f)) throw StageError("clip norm must be positive and finite, got $norm")
            if (ord != 1 && ord != 2) throw StageError("clip ord must be 1 or 2, got $ord")
        }
        override fun params(withinClip: Boolean): ByteArray = Bytes.le(6) {
            put(ord.toByte()); put(((if (adaptive) 1 else 0) or (if (adaptive && withinClip) 2 else 0)).toByte()); putFloat(norm)
        }
        override fun describe() = mapOf("kind" to kind, "norm" to norm.toDouble(), "ord" to ord, "adaptive" to adaptive)
    }

    class Noise(code: Int, kind: String, len: Int, val scale: Double, val noiseMultiplier: Double) : Stage(code, kind, len, len) {
        init {
            if (!(scale.isFinite() && scale > 0)) throw StageError("$kind: scale must be positive and finite, got $scale")
            if (!(noiseMultiplier.isFinite() && noiseMultiplier > 0)) {
                throw StageError("$kind: noise_multiplier must be positive and finite, got $noiseMultiplier")
            }
        }
        val gaussian get() = code == 2
        override fun params(withinClip: Boolean): ByteArray = Bytes.le(16) { putDouble(scale); putDouble(noiseMultiplier) }
        override fun describe() = mapOf(
            "kind" to kind, "mechanism" to (if (gaussian) "gaussian" else "laplace"),
            "scale" to scale, "noise_multiplier" to noiseMultiplier,
        )
    }

    class RandomK(len: Int, val k: Int, val unbiased: Boolean) : Stage(4, "random_k", len, k) {
        init { if (k < 1 || k > len) throw StageError("random_k: k must be in [1, $len], got $k") }
        override fun params(withinClip: Boolean): ByteArray = Bytes.le(5) { putInt(k); put((if (unbiased) 1 else 0).toByte()) }
        override fun describe() = mapOf("kind" to kind, "k" to k, "unbiased" to unbiased)
    }

    class TopK(len: Int, val k: Int) : Stage(5, "top_k", len, k) {
        init { if (k < 1 || k > len) throw StageError("top_k: k must be in [1, $len], got $k") }
        override fun params(withinClip: Boolean): ByteArray = Bytes.le(4) { putInt(k) }
        override fun describe() = mapOf("kind" to kind, "k" to k)
    }

    class ErrorFeedback(len: Int) : Stage(6, "error_feedback", len, len) {
        override fun params(withinClip: Boolean) = ByteArray(0)
        override fun describe() = mapOf<String, Any>("kind" to kind)
    }

    class Rotate(len: Int, val block: Int) : Stage(7, "rotate", len, paddedLength(len, block)) {
        init {
            if (block < 2 || block > 65536 || block and (block - 1) != 0) {
                throw StageError("rotate: block must be a power of two in [2, 65536], got $block")
            }
        }
        override fun params(withinClip: Boolean) = byteArrayOf(Integer.numberOfTrailingZeros(block).toByte())
        override fun describe() = mapOf("kind" to kind, "block" to block)
    }

    class Quantize(len: Int, val bits: Int, val chunk: Int) : Stage(8, "quantize", len, len) {
        init {
            if (bits !in intArrayOf(1, 2, 4, 8)) throw StageError("quantize: bits must be one of 1, 2, 4, 8, got $bits")
            if (chunk < 1 || chunk > (1 shl 24)) throw StageError("quantize: chunk must be in [1, 2^24], got $chunk")
        }
        override fun params(withinClip: Boolean): ByteArray = Bytes.le(5) { put(bits.toByte()); putInt(chunk) }
        override fun describe() = mapOf("kind" to kind, "bits" to bits, "chunk" to chunk)
    }

    companion object {
        fun paddedLength(m: Int, block: Int): Int {
            val padded = (m.toLong() + block - 1) / block * block
            if (padded > Int.MAX_VALUE) throw StageError("rotate: padded length $padded is too large")
            return padded.toInt()
        }

        /** Rebuild a stage from its wire record (§3), given its input length. */
        fun fromRecord(code: Int, body: ByteArray, length: Int): Stage {
            val expected = when (code) {
                1 -> 6; 2, 3 -> 16; 4 -> 5; 5 -> 4; 6 -> 0; 7 -> 1; 8 -> 5
                else -> throw StageError("unknown stage kind code $code")
            }
            if (body.size != expected) throw StageError("stage kind $code record has ${body.size} parameter bytes, expected $expected")
            val b = java.nio.ByteBuffer.wrap(body).order(java.nio.ByteOrder.LITTLE_ENDIAN)
            return when (code) {
                1 -> {
                    val ord = b.get().toInt() and 0xFF
                    val flags = b.get().toInt() and 0xFF
                    val norm = b.getFloat()
                    if (flags and 0b11.inv() != 0) throw StageError("clip record has unknown flag bits $flags")
                    if (flags and 1 == 0 && flags and 2 != 0) throw StageError("clip record sets the within-clip bit without adaptive clipping")
                    Clip(length, norm, ord, flags and 1 != 0)
                }
                2, 3 -> Noise(code, if (code == 2) "gaussian_noise" else "laplace_noise", length, b.getDouble(), b.getDouble())
                4 -> {
                    val k = b.getInt()
                    val flags = b.get().toInt() and 0xFF
                    if (flags > 1) throw StageError("random_k record has unknown flag bits $flags")
                    if (k < 0) throw StageError("random_k: k must be in [1, $length], got ${k.toUInt()}")
                    RandomK(length, k, flags == 1)
                }
                5 -> {
                    val k = b.getInt()
                    if (k < 0) throw StageError("top_k: k must be in [1, $length], got ${k.toUInt()}")
                    TopK(length, k)
                }
                6 -> ErrorFeedback(length)
                7 -> {
                    val log2 = b.get().toInt() and 0xFF
                    if (log2 < 1 || log2 > 16) throw StageError("rotate block log2 must be in [1, 16], got $log2")
                    Rotate(length, 1 shl log2)
                }
                else -> {
                    val bits = b.get().toInt() and 0xFF
                    val chunk = b.getInt()
                    if (chunk < 0) throw StageError("quantize: chunk must be in [1, 2^24], got ${chunk.toUInt()}")
                    Quantize(length, bits, chunk)
                }
            }
        }

        /** Runtime stages of a pipeline for model dimension [dim] and clip bound [clipNorm]. */
        fun build(config: List<StageConfig>, dim: Int, clipNorm: Double?): List<Stage> {
            try {
                val clip = config.filterIsInstance<StageConfig.Clip>().firstOrNull()
                checkStageOrder(config.map { it.kind }, clip?.adaptive == true)
            } catch (e: IllegalArgumentException) {
                throw PipelineInputError(e.message ?: "invalid stage order")
            }
            val out = ArrayList<Stage>()
            var length = dim
            for ((i, spec) in config.withIndex()) {
                val stage: Stage = try {
                    when (spec) {
                        is StageConfig.Clip -> Clip(length, (clipNorm ?: spec.norm).toFloat(), spec.ord, spec.adaptive)
                        is StageConfig.GaussianNoise -> Noise(2, spec.kind, length, spec.sigma, spec.noiseMultiplier)
                        is StageConfig.LaplaceNoise -> Noise(3, spec.kind, length, spec.scale, spec.noiseMultiplier)
                        is StageConfig.GaussianEpsilon -> {
                            val sensitivity = 2.0 * (out.first() as Clip).norm.toDouble()
                            val sigma = try {
                                Calibration.analyticGaussianSigma(spec.epsilon, spec.delta, sensitivity)
                            } catch (e: IllegalArgumentException) {
                                throw PipelineInputError(e.message ?: "bad (epsilon, delta)")
                            }
                            Noise(2, spec.kind, length, sigma, sigma / sensitivity)
                        }
                        is StageConfig.LaplaceEpsilon -> {
                            if (!(spec.epsilon > 0 && spec.epsilon.isFinite())) throw PipelineInputError("epsilon must be positive")
                            val clip = out.first() as Clip
                            val c = clip.norm.toDouble()
                            val l1 = if (clip.ord == 1) 2.0 * c else 2.0 * c * sqrt(length.toDouble())
                            val b = l1 / spec.epsilon
                            Noise(3, spec.kind, length, b, b / l1)
                        }
                        is StageConfig.RandomK -> RandomK(length, spec.kept(length), spec.unbiased)
                        is StageConfig.TopK -> TopK(length, spec.kept(length))
                        StageConfig.ErrorFeedback -> ErrorFeedback(length)
                        is StageConfig.Rotate -> Rotate(length, spec.block)
                        is StageConfig.Quantize -> Quantize(length, spec.bits, spec.chunk)
                    }
                } catch (e: StageError) {
                    throw PipelineInputError("stage $i (${spec.kind}) does not fit dimension $length: ${e.message}")
                }
                out.add(stage)
                length = stage.outLen
            }
            return out
        }
    }
}

internal object Bytes {
    inline fun le(size: Int, fill: java.nio.ByteBuffer.() -> Unit): ByteArray {
        val buf = java.nio.ByteBuffer.allocate(size).order(java.nio.ByteOrder.LITTLE_ENDIAN)
        buf.fill()
        return buf.array()
    }
}
