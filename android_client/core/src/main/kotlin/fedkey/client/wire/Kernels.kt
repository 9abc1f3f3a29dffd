package fedkey.client.wire

import kotlin.math.floor
import kotlin.math.sqrt

/** The numeric kernels of wire format v1 (§5), in binary64 and in the order the spec fixes. */
internal object Kernels {
    /** L2 (ord 2) or L1 (ord 1) norm, summed sequentially in index order. */
    fun norm(x: DoubleArray, ord: Int): Double {
        var s = 0.0
        if (ord == 2) { for (v in x) s += v * v; return sqrt(s) }
        for (v in x) s += Math.abs(v)
        return s
    }

    /** §5.2: the first k distinct bounded draws of the mask stream, sorted ascending. */
    fun randomKMask(sharedSeed: Long, dim: Int, k: Int): IntArray {
        require(k in 1..dim) { "k must be in [1, $dim], got $k" }
        val key = Prng.derive(sharedSeed, Prng.STREAM_MASK)
        val seen = java.util.BitSet(dim)
        val out = IntArray(k)
        var n = 0
        var j = 0L
        while (n < k) {
            val c = Prng.toBounded(Prng.output(key, j++), dim.toLong()).toInt()
            if (!seen.get(c)) { seen.set(c); out[n++] = c }
        }
        out.sort()
        return out
    }

    /** §5.2: indices of the k largest |x|, ties toward the lower index, ascending. */
    fun topKIndices(x: DoubleArray, k: Int): IntArray {
        val d = x.size
        require(k in 1..d) { "k must be in [1, $d], got $k" }
        if (k == d) return IntArray(d) { it }
        val mags = DoubleArray(d) { Math.abs(x[it]) }
        val sorted = mags.copyOf().also { it.sort() }
        val thresh = sorted[d - k]
        var greater = 0
        for (m in mags) if (m > thresh) greater++
        var equalLeft = k - greater
        val out = IntArray(k)
        var n = 0
        for (i in 0 until d) {
            val m = mags[i]
            if (m > thresh) out[n++] = i
            else if (m == thresh && equalLeft > 0) { out[n++] = i; equalLeft-- }
        }
        return out
    }

    fun encodeGaps(indices: IntArray): ByteArray {
        val out = java.io.ByteArrayOutputStream()
        var prev = -1L
        for (i in indices) {
            var g = i.toLong() - prev - 1
            require(g >= 0) { "indices must be strictly increasing" }
            prev = i.toLong()
            while (true) {
                val byte = (g and 0x7F).toInt()
                g = g ushr 7
                if (g == 0L) { out.write(byte); break }
                out.write(byte or 0x80)
            }
        }
        return out.toByteArray()
    }

    /** Exactly [count] LEB128 varints filling [data]; indices strictly increasing and < [dim]. */
    fun decodeGaps(data: ByteArray, count: Int, dim: Int): IntArray {
        val out = IntArray(count)
        var pos = 0
        var prev = -1L
        for (n in 0 until count) {
            var g = 0L
            var len = 0
            while (true) {
                if (pos >= data.size) throw InvalidValueError("index section: holds fewer than $count complete varints")
                val b = data[pos++].toInt() and 0xFF
                if (len == 5) throw InvalidValueError("index section: varint longer than 5 bytes")
                g = g or ((b and 0x7F).toLong() shl (7 * len))
                len++
                if (b < 0x80) break
            }
            val idx = prev + g + 1
            if (idx >= dim) throw InvalidValueError("index section: index $idx out of range for dimension $dim")
            out[n] = idx.toInt()
            prev = idx
        }
        if (pos != data.size) throw InvalidValueError("index section: ${data.size - pos} bytes left after $count varints")
        return out
    }

    /** Unnormalised Walsh–Hadamard butterflies on each block, in place (§5.3 order). */
    private fun fwhtBlocks(v: DoubleArray, block: Int) {
        var start = 0
        while (start < v.size) {
            var h = 1
            while (h < block) {
                for (i in 0 until block) {
                    if (i and h == 0) {
                        val a = v[start + i]
                        val b = v[start + i + h]
                        v[start + i] = a + b
                        v[start + i + h] = a - b
                    }
                }
                h *= 2
            }
            start += block
        }
    }

    private fun applySigns(v: DoubleArray, sharedSeed: Long) {
        val key = Prng.derive(sharedSeed, Prng.STREAM_SIGNS)
        for (i in v.indices) v[i] *= Prng.toSign(Prng.output(key, i.toLong()))
    }

    fun rotate(x: DoubleArray, sharedSeed: Long, block: Int): DoubleArray {
        val v = DoubleArray(Stage.paddedLength(x.size, block))
        System.arraycopy(x, 0, v, 0, x.size)
        applySigns(v, sharedSeed)
        fwhtBlocks(v, block)
        val s = 1.0 / sqrt(block.toDouble())
        for (i in v.indices) v[i] *= s
        return v
    }

    fun unrotate(y: DoubleArray, sharedSeed: Long, block: Int, m: Int): DoubleArray {
        val v = y.copyOf()
        fwhtBlocks(v, block)
        val s = 1.0 / sqrt(block.toDouble())
        for (i in v.indices) v[i] *= s
        applySigns(v, sharedSeed)
        return v.copyOf(m)
    }

    /** float64 → float32 rounded toward −∞ (dir < 0) or +∞ (dir > 0). */
    fun roundF32(x: Double, dir: Int): Float {
        val f = x.toFloat()
        return if (dir < 0) { if (f.toDouble() > x) Math.nextDown(f) else f } else { if (f.toDouble() < x) Math.nextUp(f) else f }
    }

    class Quantized(val codes: ByteArray, val lo: FloatArray, val scale: FloatArray)

    /** §5.4 stochastic quantization with the rounding stream of the private seed. */
    fun quantize(x: DoubleArray, privateSeed: Long, bits: Int, chunk: Int): Quantized {
        val m = x.size
        val nc = ((m.toLong() + chunk - 1) / chunk).toInt()
        val levels = (1 shl bits) - 1
        val lo = FloatArray(nc)
        val scale = FloatArray(nc)
        for (c in 0 until nc) {
            val from = c * chunk
            val to = minOf(m, from + chunk)
            var mn = x[from]
            var mx = x[from]
            for (i in from + 1 until to) { if (x[i] < mn) mn = x[i]; if (x[i] > mx) mx = x[i] }
            lo[c] = roundF32(mn, -1)
            scale[c] = roundF32((mx - lo[c].toDouble()) / levels, +1)
        }
        val key = Prng.derive(privateSeed, Prng.STREAM_ROUNDING)
        val codes = ByteArray(m)
        for (i in 0 until m) {
            val c = i / chunk
            val s = scale[c].toDouble()
            val t = if (s > 0) (x[i] - lo[c].toDouble()) / s else 0.0
            val u = Prng.toUniform(Prng.output(key, i.toLong()))
            val q = floor(t + u).coerceIn(0.0, levels.toDouble())
            codes[i] = q.toInt().toByte()
        }
        return Quantized(codes, lo, scale)
    }

    fun dequantize(codes: ByteArray, lo: FloatArray, scale: FloatArray, chunk: Int): DoubleArray =
        DoubleArray(codes.size) { i ->
            val c = i / chunk
            lo[c].toDouble() + (codes[i].toInt() and 0xFF).toDouble() * scale[c].toDouble()
        }

    fun pack(codes: ByteArray, bits: Int): ByteArray {
        val out = ByteArray(((codes.size.toLong() * bits + 7) / 8).toInt())
        for (j in codes.indices) {
            val bit = j.toLong() * bits
            val idx = (bit / 8).toInt()
            out[idx] = (out[idx].toInt() or ((codes[j].toInt() and 0xFF) shl (bit % 8).toInt())).toByte()
        }
        return out
    }

    fun unpack(packed: ByteArray, bits: Int, m: Int): ByteArray {
        val mask = (1 shl bits) - 1
        return ByteArray(m) { j ->
            val bit = j.toLong() * bits
            (((packed[(bit / 8).toInt()].toInt() and 0xFF) ushr (bit % 8).toInt()) and mask).toByte()
        }
    }
}
