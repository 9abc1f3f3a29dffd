package fedkey.client.wire

import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.security.SecureRandom
import java.util.Random
import java.util.zip.CRC32
import kotlin.math.abs
import kotlin.math.ln

/** The fixed header fields of one update message (§3). Unsigned fields are held in wider signed types. */
data class UpdateHeader(
    val formatVersion: Int,
    val modelVersion: Long,
    val round: Long,
    val phoneId: Long,
    val dim: Int,
    val sharedSeed: Long,
)

/** What [UpdateEncoder.encode] returns. */
class EncodedUpdate(
    /** The message to upload (wire format v1). */
    val bytes: ByteArray,
    /** The shared seed written in the header. */
    val sharedSeed: Long,
    /** With error feedback: the residual to pass to the next round's [UpdateEncoder.encode]; keep it on the phone. */
    val residual: FloatArray?,
    /** With adaptive clipping: whether the delta's norm was within the bound (the bit that is sent). */
    val withinClip: Boolean?,
)

/** A decoded message: the dense delta and how it was made (stage descriptions as in the Python decoder). */
class DecodedUpdate(
    val header: UpdateHeader,
    val delta: FloatArray,
    val stages: List<Map<String, Any>>,
    val clipNorm: Double?,
    val withinClip: Boolean?,
)

/** Values between stages (binary64), as the Python `Batch` holds one phone. */
internal class Work(var values: DoubleArray?) {
    var indices: IntArray? = null
    var quantized: Kernels.Quantized? = null
    var withinClip: Boolean? = null
    var efReference: DoubleArray? = null
}

/**
 * The phone half of the update pipeline: runs the configured stages over a model delta and writes one
 * wire-format-v1 message (WIRE_FORMAT.md). Stateless and thread-safe apart from [random].
 *
 *     val encoder = UpdateEncoder(StageConfig.listFromJson(roundConfigJson), dim = bundle.numParameters)
 *     val update = encoder.encode(result.delta, modelVersion = bundle.modelVersion, round = round, phoneId = id)
 *     upload(update.bytes)
 *
 * Seeds: by default both the shared seed (sent) and the private seed (never sent; stochastic rounding)
 * are drawn from [random], a [SecureRandom]; local DP noise also comes from it.
 */
class UpdateEncoder(val config: List<StageConfig>, val dim: Int, private val random: Random = SecureRandom()) {
    private val defaultClip: Double? = config.filterIsInstance<StageConfig.Clip>().firstOrNull()?.norm

    init {
        if (dim < 1) throw PipelineInputError("dimension must be >= 1, got $dim")
        Stage.build(config, dim, defaultClip) // fail early on k > d and friends
    }

    val hasErrorFeedback: Boolean get() = StageConfig.ErrorFeedback in config

    /**
     * Encode [delta] (length [dim], the weights.bin layout). [clipNorm] overrides the configured bound (adaptive
     * clipping: the server announces this round's bound); [residual] is the error-feedback state returned by the
     * previous call (zeros when null). [noise] supplies local DP noise (default: [random]).
     */
    @JvmOverloads
    fun encode(
        delta: FloatArray,
        modelVersion: Long,
        round: Long,
        phoneId: Long,
        residual: FloatArray? = null,
        clipNorm: Double? = null,
        sharedSeed: Long = random.nextLong(),
        privateSeed: Long = random.nextLong(),
        noise: Random = random,
    ): EncodedUpdate {
        if (delta.size != dim) throw PipelineInputError("delta must have $dim values, got ${delta.size}")
        if (modelVersion !in 0..0xFFFFFFFFL || round !in 0..0xFFFFFFFFL) {
            throw PipelineInputError("round and model_version must be in [0, 2^32)")
        }
        for (v in delta) if (!v.isFinite()) throw PipelineInputError("delta contains NaN or infinite values")
        if (residual != null && residual.size != dim) throw PipelineInputError("residual must have $dim values, got ${residual.size}")
        if (clipNorm != null && defaultClip == null) throw PipelineInputError("clipNorm given but the pipeline has no clip stage")
        val stages = Stage.build(config, dim, clipNorm ?: defaultClip)
        val work = Work(DoubleArray(dim) { delta[it].toDouble() })
        for (stage in stages) device(stage, work, sharedSeed, privateSeed, residual, noise)
        val bytes = serialize(work, stages, modelVersion, round, phoneId, sharedSeed)
        val newResidual = if (stages.any { it is Stage.ErrorFeedback }) residualOf(work, stages, sharedSeed) else null
        val adaptive = stages.firstOrNull().let { it is Stage.Clip && it.adaptive }
        return EncodedUpdate(bytes, sharedSeed, newResidual, if (adaptive) work.withinClip else null)
    }

    private fun device(stage: Stage, w: Work, sharedSeed: Long, privateSeed: Long, residual: FloatArray?, noise: Random) {
        val x = w.values!!
        when (stage) {
            is Stage.Clip -> {
                val n = Kernels.norm(x, stage.ord)
                val c = stage.norm.toDouble()
                val within = n <= c
                val factor = if (within) 1.0 else c / (if (n > 0) n else 1.0)
                for (i in x.indices) x[i] *= factor
                w.withinClip = if (stage.adaptive) within else null
            }
            is Stage.Noise -> if (stage.gaussian) {
                for (i in x.indices) x[i] += noise.nextGaussian() * stage.scale
            } else {
                for (i in x.indices) {
                    // Laplace(0, b) by inversion: u uniform in (−½, ½).
                    var u: Double
                    do { u = noise.nextDouble() - 0.5 } while (u == -0.5)
                    x[i] -= stage.scale * Math.signum(u) * ln(1.0 - 2.0 * abs(u))
                }
            }
            is Stage.RandomK -> {
                val mask = Kernels.randomKMask(sharedSeed, stage.inLen, stage.k)
                w.values = DoubleArray(mask.size) { x[mask[it]] }
            }
            is Stage.TopK -> {
                val idx = Kernels.topKIndices(x, stage.k)
                w.indices = idx
                w.values = DoubleArray(idx.size) { x[idx[it]] }
            }
            is Stage.ErrorFeedback -> {
                if (residual != null) for (i in x.indices) x[i] += residual[i].toDouble()
                w.efReference = x.copyOf()
            }
            is Stage.Rotate -> w.values = Kernels.rotate(x, sharedSeed, stage.block)
            is Stage.Quantize -> {
                w.quantized = Kernels.quantize(x, privateSeed, stage.bits, stage.chunk)
                if (w.quantized!!.scale.any { !it.isFinite() }) {
                    throw PipelineInputError("a chunk's value range overflows float32; these values cannot be quantized")
                }
                w.values = null
            }
        }
    }

    /** Error feedback: the values at the error-feedback point minus what the server will reconstruct there. */
    private fun residualOf(w: Work, stages: List<Stage>, sharedSeed: Long): FloatArray {
        val at = stages.indexOfFirst { it is Stage.ErrorFeedback }
        val view = Work(w.values?.copyOf()).also { it.indices = w.indices; it.quantized = w.quantized }
        for (stage in stages.subList(at + 1, stages.size).asReversed()) server(stage, view, sharedSeed)
        val ref = w.efReference!!
        val seen = view.values!!
        return FloatArray(ref.size) { (ref[it] - seen[it]).toFloat() }
    }

    private fun serialize(w: Work, stages: List<Stage>, modelVersion: Long, round: Long, phoneId: Long, sharedSeed: Long): ByteArray {
        val parts = java.io.ByteArrayOutputStream()
        parts.write(Bytes.le(HEADER_SIZE) {
            put(MAGIC); putShort(1); putShort(0); putInt(modelVersion.toInt()); putInt(round.toInt())
            putLong(phoneId); putInt(dim); putLong(sharedSeed); put(stages.size.toByte())
        })
        for (s in stages) {
            val body = s.params(w.withinClip == true)
            parts.write(s.code); parts.write(body.size); parts.write(body)
        }
        w.indices?.let { idx ->
            val gaps = Kernels.encodeGaps(idx)
            parts.write(Bytes.le(4) { putInt(gaps.size) }); parts.write(gaps)
        }
        val q = w.quantized
        if (q != null) {
            val bits = (stages.last() as Stage.Quantize).bits
            parts.write(Bytes.le(4 * q.lo.size) { q.lo.forEach { putFloat(it) } })
            parts.write(Bytes.le(4 * q.scale.size) { q.scale.forEach { putFloat(it) } })
            parts.write(Kernels.pack(q.codes, bits))
        } else {
            val v = w.values!!
            parts.write(Bytes.le(4 * v.size) {
                v.forEach {
                    val f = it.toFloat()
                    if (!f.isFinite()) throw PipelineInputError("a value overflows float32 and cannot be sent")
                    putFloat(f)
                }
            })
        }
        val crc = CRC32().also { it.update(parts.toByteArray()) }.value
        parts.write(Bytes.le(4) { putInt(crc.toInt()) })
        return parts.toByteArray()
    }

    companion object {
        internal val MAGIC = byteArrayOf(0x46, 0x4B, 0x55, 0x50)
        internal const val HEADER_SIZE = 37
        internal const val MAX_STAGES = 8

        /** The server half of one stage (also used by the phone for its own error-feedback residual). */
        internal fun server(stage: Stage, w: Work, sharedSeed: Long) {
            when (stage) {
                is Stage.RandomK -> {
                    val mask = Kernels.randomKMask(sharedSeed, stage.inLen, stage.k)
                    val factor = if (stage.unbiased) stage.inLen.toDouble() / stage.k.toDouble() else 1.0
                    val dense = DoubleArray(stage.inLen)
                    val v = w.values!!
                    for (i in mask.indices) dense[mask[i]] = v[i] * factor
                    w.values = dense
                }
                is Stage.TopK -> {
                    val dense = DoubleArray(stage.inLen)
                    val v = w.values!!
                    val idx = w.indices!!
                    for (i in idx.indices) dense[idx[i]] = v[i]
                    w.values = dense
                }
                is Stage.Rotate -> w.values = Kernels.unrotate(w.values!!, sharedSeed, stage.block, stage.inLen)
                is Stage.Quantize -> {
                    val q = w.quantized!!
                    w.values = Kernels.dequantize(q.codes, q.lo, q.scale, stage.chunk)
                    w.quantized = null
                }
                else -> {}
            }
        }
    }
}

/** The server half: parse and validate one message against the model dimension, and decode it (§6). */
object UpdateDecoder {
    private class Cursor(val data: ByteArray, val end: Int) {
        var pos = 0
        fun take(n: Long, what: String): ByteArray {
            if (n < 0 || pos + n > end) throw TruncatedMessageError("$what: needs $n bytes at offset $pos, message body has $end")
            return data.copyOfRange(pos, pos + n.toInt()).also { pos += n.toInt() }
        }
        fun remaining() = end - pos
    }

    private fun le(b: ByteArray): ByteBuffer = ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN)

    fun decode(message: ByteArray, dim: Int): DecodedUpdate {
        if (dim < 1) throw LayoutMismatchError("layout size must be in [1, 2^32), got $dim")
        if (message.size < UpdateEncoder.HEADER_SIZE + 4) {
            throw TruncatedMessageError("message has ${message.size} bytes, less than header + checksum")
        }
        if (!message.copyOfRange(0, 4).contentEquals(UpdateEncoder.MAGIC)) throw BadMagicError("message does not start with FKUP")
        val bodyEnd = message.size - 4
        val crc = le(message.copyOfRange(bodyEnd, message.size)).int.toLong() and 0xFFFFFFFFL
        if (CRC32().also { it.update(message, 0, bodyEnd) }.value != crc) throw ChecksumError("CRC-32 trailer does not match the message")
        val cur = Cursor(message, bodyEnd)
        val h = le(cur.take(UpdateEncoder.HEADER_SIZE.toLong(), "header")).also { it.position(4) }
        val version = h.short.toInt() and 0xFFFF
        val flags = h.short.toInt() and 0xFFFF
        val modelVersion = h.int.toLong() and 0xFFFFFFFFL
        val round = h.int.toLong() and 0xFFFFFFFFL
        val phoneId = h.long
        val msgDim = h.int.toLong() and 0xFFFFFFFFL
        val seed = h.long
        val nStages = h.get().toInt() and 0xFF
        if (version != 1) throw UnsupportedVersionError("format version $version (this decoder reads 1)")
        if (flags != 0) throw UnsupportedVersionError("reserved header flags are $flags, must be 0 in v1")
        if (msgDim != dim.toLong()) throw LayoutMismatchError("message dimension $msgDim does not match the model layout ($dim)")
        if (nStages > UpdateEncoder.MAX_STAGES) throw StageError("$nStages stages, at most ${UpdateEncoder.MAX_STAGES}")
        val stages = ArrayList<Stage>()
        var withinBit = false
        var length = dim
        for (i in 0 until nStages) {
            val rec = cur.take(2, "stage record $i")
            val body = cur.take((rec[1].toInt() and 0xFF).toLong(), "stage record $i parameters")
            val stage = Stage.fromRecord(rec[0].toInt() and 0xFF, body, length)
            if (stage is Stage.Clip && (body[1].toInt() and 2) != 0) withinBit = true
            stages.add(stage)
            length = stage.outLen
        }
        val clip = stages.filterIsInstance<Stage.Clip>().firstOrNull()
        try {
            checkStageOrder(stages.map { it.kind }, clip?.adaptive == true)
        } catch (e: IllegalArgumentException) {
            throw StageError(e.message ?: "invalid stage order")
        }
        val work = Work(null)
        if (clip != null && clip.adaptive) work.withinClip = withinBit
        stages.filterIsInstance<Stage.TopK>().firstOrNull()?.let { top ->
            val n = le(cur.take(4, "index section length")).int.toLong() and 0xFFFFFFFFL
            if (n > cur.remaining()) throw TruncatedMessageError("index section claims $n bytes, ${cur.remaining()} remain")
            work.indices = Kernels.decodeGaps(cur.take(n, "index section"), top.k, dim)
        }
        val m = if (stages.isEmpty()) dim else stages.last().outLen
        val quant = stages.lastOrNull() as? Stage.Quantize
        if (quant != null) {
            val chunks = ((m.toLong() + quant.chunk - 1) / quant.chunk)
            val lo = le(cur.take(4 * chunks, "chunk minima")).let { b -> FloatArray(chunks.toInt()) { b.float } }
            val scale = le(cur.take(4 * chunks, "chunk scales")).let { b -> FloatArray(chunks.toInt()) { b.float } }
            if (!(lo.all { it.isFinite() } && scale.all { it.isFinite() })) throw InvalidValueError("a chunk minimum or scale is NaN or infinite")
            if (scale.any { it < 0f }) throw InvalidValueError("a chunk scale is negative")
            val usedBits = m.toLong() * quant.bits
            val packed = cur.take((usedBits + 7) / 8, "packed codes")
            if (usedBits % 8 != 0L && ((packed.last().toInt() and 0xFF) ushr (usedBits % 8).toInt()) != 0) {
                throw InvalidValueError("padding bits after the last code are not zero")
            }
            work.quantized = Kernels.Quantized(Kernels.unpack(packed, quant.bits, m), lo, scale)
        } else {
            val b = le(cur.take(4L * m, "values"))
            work.values = DoubleArray(m) {
                val f = b.float
                if (!f.isFinite()) throw InvalidValueError("a value is NaN or infinite")
                f.toDouble()
            }
        }
        if (cur.remaining() != 0) throw TrailingBytesError("${cur.remaining()} bytes left after the value section")
        for (stage in stages.asReversed()) UpdateEncoder.server(stage, work, seed)
        val v = work.values!!
        val delta = FloatArray(v.size) {
            val f = v[it].toFloat()
            if (!f.isFinite()) throw InvalidValueError("decoded update is not finite (value ranges overflow float32)")
            f
        }
        return DecodedUpdate(
            UpdateHeader(version, modelVersion, round, phoneId, dim, seed), delta, stages.map { it.describe() },
            clip?.norm?.toDouble(), if (clip != null && clip.adaptive) withinBit else null,
        )
    }
}
