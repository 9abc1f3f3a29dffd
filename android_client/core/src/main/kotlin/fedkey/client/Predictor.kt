package fedkey.client

import ai.onnxruntime.OrtSession
import kotlin.math.exp
import kotlin.math.ln

/** The explicit LSTM state between key events: projected state [h] (E) and cell state [c] (H). */
class LstmState(val h: FloatArray, val c: FloatArray) {
    fun copy() = LstmState(h.copyOf(), c.copyOf())
}

/** A whole-word suggestion and its model probability (word followed by a word boundary). */
data class Suggestion(val word: String, val probability: Double)

/**
 * Next-word prediction with `predict.int8.onnx` (default, what a phone ships) or `predict.onnx`.
 *
 *     val predictor = Predictor(bundle)                  // one per bundle; close() when replaced
 *     val keyboard = predictor.newContext()              // one per text field
 *     keyboard.setText("I am going ")                    // text before the cursor
 *     keyboard.suggest(3)                                // [Suggestion("home", 0.21), ...]
 *     keyboard.setText("I am going ho")                  // inside a word: completions of "ho"
 *
 * Low level: [step] feeds one piece id and returns the next-piece logits and the new state; a message starts
 * from [initialState] with `bos`. Whole words come from a beam search over pieces exactly as the Python
 * `models/suggest.py` (word = pieces + a word boundary; probabilities of segmentations that spell the same word
 * add up), restricted to [lexicon] when given, otherwise to any normalised word (letters/digits with inner
 * apostrophes; punctuation and unknown pieces are never suggested).
 *
 * A Predictor holds no mutable state besides its ONNX session (whose `run` is thread-safe) and may be shared;
 * a [KeyboardContext] is mutable: use each from one thread.
 */
class Predictor @JvmOverloads constructor(
    val bundle: Bundle,
    quantized: Boolean = true,
    val lexicon: Set<String>? = bundle.lexicon(),
    val beamWidth: Int = 6,
    val maxWordPieces: Int = 4,
    val tokenizer: Tokenizer = bundle.tokenizer(),
) : AutoCloseable {
    private val manifest = bundle.manifest
    private val session: OrtSession = Onnx.session(bundle, if (quantized) "predict_int8" else "predict")
    val embedDim: Int = manifest.embedDim
    val hiddenDim: Int = manifest.hiddenDim
    val vocabSize: Int = manifest.vocabSize

    init {
        require(tokenizer.vocabSize == vocabSize) { "tokenizer has ${tokenizer.vocabSize} pieces, the model ${manifest.vocabSize}" }
    }

    private val specialIds = setOf(manifest.pad, manifest.unk, manifest.bos, manifest.eos)
    private val startIds: IntArray = (0 until vocabSize).filter { tokenizer.wordStart[it] && it !in specialIds }.toIntArray()

    // As models/suggest.py: continuation pieces are all non-word-start pieces except pad/bos/eos (unk included).
    private val contIds: IntArray = (0 until vocabSize)
        .filter { !tokenizer.wordStart[it] && it != manifest.pad && it != manifest.bos && it != manifest.eos }.toIntArray()
    private val boundaryIds: IntArray = startIds + manifest.eos
    private val pieceText = Array(vocabSize) { tokenizer.pieceText(it) }


    /** The state of a new message (zeros); feed `bos` first. */
    fun initialState() = LstmState(FloatArray(embedDim), FloatArray(hiddenDim))

    /** One key event: the logits of the next piece after [token], and the new state ([state] is not changed). */
    fun step(token: Int, state: LstmState): Pair<FloatArray, LstmState> {
        val out = stepBatch(intArrayOf(token), state.h, state.c)
        return out.logits to LstmState(out.h, out.c)
    }

    internal class BatchOut(val logits: FloatArray, val h: FloatArray, val c: FloatArray)

    /** Batched step: tokens [B], h [B·E], c [B·H] row-major. */
    internal fun stepBatch(tokens: IntArray, h: FloatArray, c: FloatArray): BatchOut {
        val b = tokens.size.toLong()
        val inputs = mapOf(
            "token" to Onnx.longs(LongArray(tokens.size) { tokens[it].toLong() }, longArrayOf(b)),
            "h" to Onnx.floats(h, longArrayOf(b, embedDim.toLong())),
            "c" to Onnx.floats(c, longArrayOf(b, hiddenDim.toLong())),
        )
        return Onnx.run(session, inputs) { r -> BatchOut(Onnx.floatsOf(r, "logits"), Onnx.floatsOf(r, "h_out"), Onnx.floatsOf(r, "c_out")) }
    }

    /** Logits after each of [tokens] fed from the zero state (for tests and scoring), and the final state. */
    fun run(tokens: IntArray): Pair<List<FloatArray>, LstmState> {
        var state = initialState()
        val all = ArrayList<FloatArray>()
        for (t in tokens) {
            val (logits, next) = step(t, state)
            all.add(logits)
            state = next
        }
        return all to state
    }

    /** The [k] most likely next pieces (ids) after [logits], skipping the special ids. */
    fun topPieces(logits: FloatArray, k: Int): IntArray =
        logits.indices.filter { it !in specialIds }.sortedByDescending { logits[it] }.take(k).toIntArray()

    private fun logSoftmax(logits: FloatArray, offset: Int): DoubleArray {
        var max = Double.NEGATIVE_INFINITY
        for (i in 0 until vocabSize) max = maxOf(max, logits[offset + i].toDouble())
        var sum = 0.0
        for (i in 0 until vocabSize) sum += exp(logits[offset + i] - max)
        val lse = max + ln(sum)
        return DoubleArray(vocabSize) { logits[offset + it] - lse }
    }

    private fun allowed(word: String): Boolean = if (lexicon != null) word in lexicon else TextNormalizer.isWord(word)

    /** Indices of the [n] largest values of [values] at [ids] (descending), as positions into [ids]. */
    private fun topOf(values: DoubleArray, ids: IntArray, n: Int): IntArray {
        // Insertion into a small sorted list: O(|ids| · n) with n = beam width, no boxing (a keyboard has ~20 ms).
        val m = minOf(n, ids.size)
        val best = IntArray(m)
        var size = 0
        for (p in ids.indices) {
            val v = values[ids[p]]
            if (size == m && v <= values[ids[best[m - 1]]]) continue
            var i = if (size < m) size++ else m - 1
            while (i > 0 && values[ids[best[i - 1]]] < v) { best[i] = best[i - 1]; i-- }
            best[i] = p
        }
        return best
    }

    /**
     * The [k] most likely whole next words given the state after the context ([logits] are the next-piece logits
     * that state produced). Beam search over pieces as models/suggest.py `_beam_words`.
     *
     * With a [prefix] (the normalised start of the word being typed) only pieces that can spell a word starting
     * with it are expanded, so the strip completes the current word; probabilities stay those of the whole word
     * given the context. An empty prefix is the Python algorithm exactly.
     */
    @JvmOverloads
    fun suggest(state: LstmState, logits: FloatArray, k: Int, prefix: String = ""): List<Suggestion> {
        require(k >= 1) { "k must be >= 1" }
        fun compatible(text: String) = text.startsWith(prefix) || prefix.startsWith(text)
        val starts = if (prefix.isEmpty()) startIds else startIds.filter { compatible(pieceText[it]) }.toIntArray()
        if (starts.isEmpty()) return emptyList()
        val beam = minOf(beamWidth, starts.size)
        val logp0 = logSoftmax(logits, 0)
        val first = topOf(logp0, starts, beam)
        var scores = DoubleArray(first.size) { logp0[starts[first[it]]] }
        var pieces: List<IntArray> = first.map { intArrayOf(starts[it]) }
        var out = stepBatch(
            IntArray(first.size) { pieces[it][0] },
            FloatArray(first.size * embedDim) { state.h[it % embedDim] },
            FloatArray(first.size * hiddenDim) { state.c[it % hiddenDim] },
        )
        val found = LinkedHashMap<String, Double>()
        for (depth in 1..maxWordPieces) {
            val n = pieces.size
            val logps = Array(n) { logSoftmax(out.logits, it * vocabSize) }
            for (i in 0 until n) {
                var mx = Double.NEGATIVE_INFINITY
                for (id in boundaryIds) mx = maxOf(mx, logps[i][id])
                var s = 0.0
                for (id in boundaryIds) s += exp(logps[i][id] - mx)
                val done = scores[i] + mx + ln(s)
                val word = pieces[i].joinToString("") { pieceText[it] }
                if (word.startsWith(prefix) && allowed(word)) found[word] = (found[word] ?: 0.0) + exp(done)
            }
            if (depth == maxWordPieces) break
            val kth = if (found.size >= k) found.values.sortedDescending()[k - 1] else 0.0
            val threshold = ln(kth)
            val newPieces = ArrayList<IntArray>()
            val newScores = ArrayList<Double>()
            val parents = ArrayList<Int>()
            for (i in 0 until n) {
                val word = pieces[i].joinToString("") { pieceText[it] }
                val conts = if (prefix.isEmpty() || word.startsWith(prefix)) contIds
                else contIds.filter { compatible(word + pieceText[it]) }.toIntArray()
                for (j in topOf(logps[i], conts, minOf(beam, conts.size))) {
                    val s = scores[i] + logps[i][conts[j]]
                    if (s > threshold) {
                        parents.add(i); newScores.add(s); newPieces.add(pieces[i] + conts[j])
                    }
                }
            }
            if (parents.isEmpty()) break
            val m = parents.size
            out = stepBatch(
                IntArray(m) { newPieces[it].last() },
                FloatArray(m * embedDim) { out.h[parents[it / embedDim] * embedDim + it % embedDim] },
                FloatArray(m * hiddenDim) { out.c[parents[it / hiddenDim] * hiddenDim + it % hiddenDim] },
            )
            pieces = newPieces
            scores = newScores.toDoubleArray()
        }
        return found.entries.sortedByDescending { it.value }.take(k).map { Suggestion(it.key, it.value) }
    }

    /** A keyboard context for one text field (see [KeyboardContext]). */
    fun newContext() = KeyboardContext(this)

    override fun close() = session.close()
}

/**
 * The suggestion strip's state for one text field: the LSTM state after `bos` and the pieces of the text
 * before the cursor. [setText] reuses the states of the longest common prefix of pieces, so typing a word and
 * deleting text cost only the pieces that changed.
 */
class KeyboardContext internal constructor(private val predictor: Predictor) {
    private val pieces = ArrayList<Int>()
    private val states = ArrayList<Pair<FloatArray, LstmState>>() // after bos, after each piece

    init { reset() }

    /** Start a new message (state after `bos`). */
    fun reset() {
        pieces.clear()
        states.clear()
        states.add(predictor.step(predictor.bundle.manifest.bos, predictor.initialState()))
    }

    /** The normalised start of the word being typed (empty right after a space). */
    var partialWord: String = ""
        private set

    /**
     * The text of the message before the cursor. Complete words (followed by a space) form the context; a
     * trailing partial word becomes [partialWord], which [suggest] completes.
     */
    fun setText(textBeforeCursor: String) {
        // The trailing run of letters/digits/marks/apostrophes is the word being typed (leading apostrophes are
        // punctuation); everything before it is context.
        var i = textBeforeCursor.length
        while (i > 0) {
            val c = textBeforeCursor.codePointBefore(i)
            if (TextNormalizer.isWordChar(c) || c == '\''.code || c == 0x2019 || Character.getType(c) == Character.NON_SPACING_MARK.toInt()) {
                i -= Character.charCount(c)
            } else break
        }
        while (i < textBeforeCursor.length && (textBeforeCursor[i] == '\'' || textBeforeCursor[i] == '\u2019')) i++
        val tail = textBeforeCursor.substring(i)
        partialWord = TextNormalizer.pythonLower(java.text.Normalizer.normalize(tail, java.text.Normalizer.Form.NFKC)).replace('\u2019', '\'')
        setPieces(predictor.tokenizer.encodeMessage(textBeforeCursor.substring(0, i)))
    }

    /** Set the context to these piece ids (after `bos`), reusing cached states of the common prefix. */
    fun setPieces(ids: IntArray) {
        var common = 0
        while (common < pieces.size && common < ids.size && pieces[common] == ids[common]) common++
        while (pieces.size > common) { pieces.removeAt(pieces.size - 1); states.removeAt(states.size - 1) }
        for (i in common until ids.size) {
            states.add(predictor.step(ids[i], states.last().second))
            pieces.add(ids[i])
        }
    }

    val contextPieces: List<Int> get() = pieces.toList()
    val state: LstmState get() = states.last().second
    val logits: FloatArray get() = states.last().first

    /** The [k] most likely next words, completing [partialWord] when the cursor is inside a word. */
    @JvmOverloads
    fun suggest(k: Int = 3): List<Suggestion> = predictor.suggest(state, logits, k, partialWord)
}
