package fedkey.client

/**
 * SentencePiece unigram encoding in pure Kotlin, from the serialized `ModelProto` in `tokenizer.model`.
 *
 * Reproduces `SentencePieceProcessor.encode` (the optimized Viterbi of sentencepiece's unigram model) for
 * fedkey's tokenizers: normalisation rule `identity`, so the text is only whitespace-escaped (`▁` prefix,
 * spaces → `▁`, extra spaces removed); best segmentation by the sum of float32 piece scores; a character no
 * piece covers becomes `unk` (score = lowest piece score − 10), and runs of consecutive unknowns merge into
 * one `unk`, as SentencePiece does. Input must already be [TextNormalizer.normalize]d ([encodeMessage] does both).
 */
class Tokenizer private constructor(
    /** Piece strings by id. */
    val pieces: List<String>,
    val scores: FloatArray,
    val types: IntArray,
    private val addDummyPrefix: Boolean,
    private val removeExtraWhitespaces: Boolean,
) {
    val vocabSize: Int get() = pieces.size
    val unkId: Int = types.indexOfFirst { it == TYPE_UNKNOWN }.also { require(it >= 0) { "tokenizer has no unknown piece" } }

    private val pieceIds = HashMap<String, Int>()
    private val maxPieceCodePoints: Int
    private val minScore: Float
    private val maxScore: Float
    private val pieceBytes = IntArray(pieces.size) { pieces[it].toByteArray(Charsets.UTF_8).size }

    init {
        var maxLen = 1
        var mn = Float.MAX_VALUE
        var mx = java.lang.Float.MIN_NORMAL // as sentencepiece: FLT_MIN (smallest positive normal), not -FLT_MAX
        for (i in pieces.indices) {
            val t = types[i]
            if (t == TYPE_NORMAL || t == TYPE_USER_DEFINED || t == TYPE_UNUSED) {
                pieceIds.putIfAbsent(pieces[i], i)
                maxLen = maxOf(maxLen, pieces[i].codePointCount(0, pieces[i].length))
            }
            if (t == TYPE_NORMAL) { mn = minOf(mn, scores[i]); mx = maxOf(mx, scores[i]) }
        }
        maxPieceCodePoints = maxLen
        minScore = mn
        maxScore = mx
    }

    /** True for a piece that begins a word (starts with `▁`); special pieces never do. */
    val wordStart: BooleanArray = BooleanArray(pieces.size) { i ->
        types[i] != TYPE_CONTROL && types[i] != TYPE_UNKNOWN && pieces[i].startsWith(TextNormalizer.WORD_START)
    }

    /** Surface text of a piece without the word marker. */
    fun pieceText(id: Int): String = pieces[id].replace(TextNormalizer.WORD_START.toString(), "")

    fun idToPiece(id: Int): String = pieces[id]

    /** Piece ids of already normalised text (no bos/eos). */
    fun encode(normalized: String): IntArray {
        val words = if (removeExtraWhitespaces) normalized.split(' ').filter { it.isNotEmpty() } else normalized.split(' ')
        if (words.isEmpty() || (words.size == 1 && words[0].isEmpty())) return IntArray(0)
        var text = (if (addDummyPrefix) "▁" else "") + words.joinToString("▁")
        // SentencePiece strips trailing whitespace *after* escaping, so a literal ▁ typed at the end goes too.
        if (removeExtraWhitespaces) text = text.trimEnd(TextNormalizer.WORD_START)
        if (text.isEmpty()) return IntArray(0)
        val cps = text.codePoints().toArray()
        val n = cps.size
        val bestScore = FloatArray(n + 1)
        val bestStart = IntArray(n + 1) { -1 }
        val bestId = IntArray(n + 1) { -1 }
        val unkScore = minScore - UNK_PENALTY
        for (start in 0 until n) {
            val base = bestScore[start]
            var hasSingle = false
            val limit = minOf(n, start + maxPieceCodePoints)
            for (end in start + 1..limit) {
                val id = pieceIds[String(cps, start, end - start)] ?: continue
                if (types[id] == TYPE_UNUSED) continue
                val candidate = if (types[id] == TYPE_USER_DEFINED) {
                    // sentencepiece: length in UTF-8 bytes × max score − 0.1, summed in double, stored as float
                    (pieceBytes[id] * maxScore - 0.1 + base).toFloat()
                } else {
                    scores[id] + base
                }
                if (bestStart[end] == -1 || candidate > bestScore[end]) {
                    bestScore[end] = candidate; bestStart[end] = start; bestId[end] = id
                }
                if (end - start == 1) hasSingle = true
            }
            if (!hasSingle) {
                val candidate = unkScore + base
                if (bestStart[start + 1] == -1 || candidate > bestScore[start + 1]) {
                    bestScore[start + 1] = candidate; bestStart[start + 1] = start; bestId[start + 1] = unkId
                }
            }
        }
        val out = ArrayList<Int>()
        var end = n
        while (end > 0) {
            out.add(bestId[end])
            end = bestStart[end]
        }
        out.reverse()
        // Consecutive unknown pieces merge into one (SentencePieceProcessor::PopulateSentencePieceText).
        val merged = ArrayList<Int>(out.size)
        for (id in out) if (!(id == unkId && merged.isNotEmpty() && merged.last() == unkId)) merged.add(id)
        return merged.toIntArray()
    }

    /** Normalise and encode one message (no bos/eos). */
    fun encodeMessage(text: String): IntArray = encode(TextNormalizer.normalize(text))

    companion object {
        const val TYPE_NORMAL = 1
        const val TYPE_UNKNOWN = 2
        const val TYPE_CONTROL = 3
        const val TYPE_USER_DEFINED = 4
        const val TYPE_UNUSED = 5
        const val TYPE_BYTE = 6
        private const val UNK_PENALTY = 10.0f

        /** Parse a serialized SentencePiece `ModelProto` (unigram models only). */
        @JvmStatic
        fun load(proto: ByteArray): Tokenizer {
            val pieces = ArrayList<String>()
            val scores = ArrayList<Float>()
            val types = ArrayList<Int>()
            var modelType = 1
            var byteFallback = false
            var addDummyPrefix = true
            var removeExtra = true
            var normalizerName = "identity"
            var charsmap = false
            ProtoReader(proto).forEachField { field, r ->
                when (field) {
                    1 -> { // SentencePiece
                        var piece = ""
                        var score = 0f
                        var type = TYPE_NORMAL
                        ProtoReader(r.bytes()).forEachField { f, p ->
                            when (f) {
                                1 -> piece = String(p.bytes(), Charsets.UTF_8)
                                2 -> score = p.float()
                                3 -> type = p.varint().toInt()
                                else -> p.skip()
                            }
                        }
                        pieces.add(piece); scores.add(score); types.add(type)
                    }
                    2 -> ProtoReader(r.bytes()).forEachField { f, t -> // TrainerSpec
                        when (f) {
                            3 -> modelType = t.varint().toInt()
                            35 -> byteFallback = t.varint() != 0L
                            else -> t.skip()
                        }
                    }
                    3 -> ProtoReader(r.bytes()).forEachField { f, nrm -> // NormalizerSpec
                        when (f) {
                            1 -> normalizerName = String(nrm.bytes(), Charsets.UTF_8)
                            2 -> charsmap = nrm.bytes().isNotEmpty()
                            3 -> addDummyPrefix = nrm.varint() != 0L
                            4 -> removeExtra = nrm.varint() != 0L
                            else -> nrm.skip()
                        }
                    }
                    else -> r.skip()
                }
            }
            require(pieces.isNotEmpty()) { "tokenizer.model holds no pieces" }
            require(modelType == 1) { "only unigram SentencePiece models are supported (model_type=$modelType)" }
            require(!byteFallback) { "byte_fallback tokenizers are not supported" }
            require(!charsmap || normalizerName == "identity") {
                "the tokenizer's normalizer is '$normalizerName'; fedkey tokenizers use 'identity' (text is normalised before encoding)"
            }
            return Tokenizer(pieces, scores.toFloatArray(), types.toIntArray(), addDummyPrefix, removeExtra)
        }
    }
}

/** Minimal protobuf wire-format reader: just what `ModelProto` needs. */
internal class ProtoReader(private val buf: ByteArray) {
    private var pos = 0
    private var wireType = 0

    fun forEachField(body: (Int, ProtoReader) -> Unit) {
        while (pos < buf.size) {
            val key = varint()
            wireType = (key and 7).toInt()
            val field = (key ushr 3).toInt()
            body(field, this)
        }
    }

    fun varint(): Long {
        var result = 0L
        var shift = 0
        while (true) {
            require(pos < buf.size) { "truncated protobuf varint" }
            val b = buf[pos++].toInt() and 0xFF
            result = result or ((b and 0x7F).toLong() shl shift)
            if (b < 0x80) return result
            shift += 7
            require(shift < 64) { "protobuf varint too long" }
        }
    }

    fun bytes(): ByteArray {
        require(wireType == 2) { "expected a length-delimited protobuf field" }
        val n = varint().toInt()
        require(n >= 0 && pos + n <= buf.size) { "truncated protobuf field" }
        return buf.copyOfRange(pos, pos + n).also { pos += n }
    }

    fun float(): Float {
        require(wireType == 5 && pos + 4 <= buf.size) { "expected a fixed32 protobuf field" }
        val bits = (buf[pos].toInt() and 0xFF) or ((buf[pos + 1].toInt() and 0xFF) shl 8) or
            ((buf[pos + 2].toInt() and 0xFF) shl 16) or ((buf[pos + 3].toInt() and 0xFF) shl 24)
        pos += 4
        return Float.fromBits(bits)
    }

    fun skip() {
        when (wireType) {
            0 -> varint()
            1 -> pos += 8
            2 -> { val n = varint().toInt(); pos += n }
            5 -> pos += 4
            else -> throw IllegalArgumentException("unsupported protobuf wire type $wireType")
        }
        require(pos <= buf.size) { "truncated protobuf field" }
    }
}
