package fedkey.client

import ai.onnxruntime.OrtSession

/** Training rows: R rows of T ids (tokens, targets) and a 0/1 mask, row-major (docs/artifacts.md §6). */
class TrainingRows(val count: Int, val seqLen: Int, val tokens: LongArray, val targets: LongArray, val mask: FloatArray)

/** Rows grouped into [numBatches] batches of [batchSize] rows; the last batch is filled with empty rows. */
class Batches(val numBatches: Int, val batchSize: Int, val seqLen: Int, val tokens: LongArray, val targets: LongArray, val mask: FloatArray) {
    /** Number of counted target pieces. */
    val countedTargets: Int get() = mask.count { it > 0f }
}

/** What a local update returns: the clipped delta to encode and send, per-step losses and the pre-clip norm. */
class LocalUpdateResult(val delta: FloatArray, val losses: FloatArray, val deltaNorm: Float)

/**
 * On-device training with `local_update.onnx` (K SGD steps with per-step gradient clipping, delta clipped to an
 * L2 bound): the device half of DP-FedAvg.
 *
 *     Trainer(bundle).use { trainer ->
 *         val batches = trainer.batches(trainer.rows(messages), batchSize = 8)
 *         val result = trainer.localUpdate(bundle.readWeights(), batches, steps = 2 * batches.numBatches,
 *                                          lr = 0.5f, gradClip = 1f, deltaClip = 0.1f)
 *         // result.delta → UpdateEncoder
 *     }
 */
class Trainer @JvmOverloads constructor(
    val bundle: Bundle,
    val tokenizer: Tokenizer = bundle.tokenizer(),
) : AutoCloseable {
    private val manifest = bundle.manifest
    private val localUpdateLazy = lazy { Onnx.session(bundle, "local_update") }
    private val trainStepLazy = lazy { Onnx.session(bundle, "train_step") }
    private val localUpdate: OrtSession by localUpdateLazy
    private val trainStep: OrtSession by trainStepLazy
    val seqLen: Int = manifest.seqLen

    /**
     * Messages → training rows: normalise, encode, `[bos] + ids + [eos]`, windows of T+1 ids starting every T
     * (models/sequences.py). Messages that normalise to nothing still give one row (bos → eos), as in Python.
     */
    fun rows(messages: List<String>): TrainingRows = rowsFromIds(messages.map { tokenizer.encodeMessage(it) })

    /** Piece-id lists (one per message) → rows. */
    fun rowsFromIds(encoded: List<IntArray>): TrainingRows {
        val t = seqLen
        val windows = ArrayList<IntArray>()
        for (ids in encoded) {
            val full = IntArray(ids.size + 2)
            full[0] = manifest.bos
            ids.copyInto(full, 1)
            full[full.size - 1] = manifest.eos
            var s = 0
            while (s < full.size - 1) {
                windows.add(full.copyOfRange(s, minOf(full.size, s + t + 1)))
                s += t
            }
        }
        val r = windows.size
        val tokens = LongArray(r * t) { manifest.pad.toLong() }
        val targets = LongArray(r * t) { manifest.pad.toLong() }
        val mask = FloatArray(r * t)
        windows.forEachIndexed { row, w ->
            for (i in 0 until w.size - 1) {
                tokens[row * t + i] = w[i].toLong()
                targets[row * t + i] = w[i + 1].toLong()
                mask[row * t + i] = 1f
            }
        }
        return TrainingRows(r, t, tokens, targets, mask)
    }

    /** Group rows in order into ceil(R / batchSize) batches (Python `Batches.from_rows`). */
    fun batches(rows: TrainingRows, batchSize: Int): Batches {
        require(rows.count >= 1 && batchSize >= 1) { "need at least one row and batchSize >= 1" }
        val n = (rows.count + batchSize - 1) / batchSize
        val size = n * batchSize * rows.seqLen
        val tokens = LongArray(size) { manifest.pad.toLong() }
        val targets = LongArray(size) { manifest.pad.toLong() }
        val mask = FloatArray(size)
        rows.tokens.copyInto(tokens)
        rows.targets.copyInto(targets)
        rows.mask.copyInto(mask)
        return Batches(n, batchSize, rows.seqLen, tokens, targets, mask)
    }

    private fun checkWeights(weights: FloatArray) =
        require(weights.size == manifest.numParameters) { "weights must have ${manifest.numParameters} values, got ${weights.size}" }

    /** K = [steps] SGD steps through local_update.onnx; step k uses batch k mod numBatches. */
    fun localUpdate(weights: FloatArray, batches: Batches, steps: Int, lr: Float, gradClip: Float, deltaClip: Float): LocalUpdateResult {
        checkWeights(weights)
        require(steps >= 1) { "steps must be >= 1, got $steps" }
        require(batches.seqLen == seqLen) { "batches have sequence length ${batches.seqLen}; the graph needs $seqLen" }
        val shape = longArrayOf(batches.numBatches.toLong(), batches.batchSize.toLong(), seqLen.toLong())
        val inputs = mapOf(
            "weights" to Onnx.floats(weights, longArrayOf(weights.size.toLong())),
            "tokens" to Onnx.longs(batches.tokens, shape),
            "targets" to Onnx.longs(batches.targets, shape),
            "mask" to Onnx.floats(batches.mask, shape),
            "steps" to Onnx.scalar(steps.toLong()),
            "lr" to Onnx.scalar(lr),
            "clip" to Onnx.scalar(gradClip),
            "delta_clip" to Onnx.scalar(deltaClip),
        )
        return Onnx.run(localUpdate, inputs) { r ->
            LocalUpdateResult(Onnx.floatsOf(r, "delta"), Onnx.floatsOf(r, "losses"), Onnx.floatsOf(r, "delta_norm")[0])
        }
    }

    /** Convenience: messages → rows → batches → [epochs] whole epochs of local update from the bundle's weights. */
    @JvmOverloads
    fun train(
        messages: List<String>, epochs: Int = 1, batchSize: Int = 8, lr: Float = 0.5f, gradClip: Float = 1f,
        deltaClip: Float = 0f, weights: FloatArray = bundle.readWeights(),
    ): LocalUpdateResult {
        val batches = batches(rows(messages), batchSize)
        return localUpdate(weights, batches, epochs * batches.numBatches, lr, gradClip, deltaClip)
    }

    /** One SGD step through train_step.onnx on batch [index]: (new weights, loss before the step). */
    fun trainStep(weights: FloatArray, batches: Batches, index: Int, lr: Float, gradClip: Float): Pair<FloatArray, Float> {
        checkWeights(weights)
        val per = batches.batchSize * seqLen
        val shape = longArrayOf(batches.batchSize.toLong(), seqLen.toLong())
        val inputs = mapOf(
            "weights" to Onnx.floats(weights, longArrayOf(weights.size.toLong())),
            "tokens" to Onnx.longs(batches.tokens.copyOfRange(index * per, (index + 1) * per), shape),
            "targets" to Onnx.longs(batches.targets.copyOfRange(index * per, (index + 1) * per), shape),
            "mask" to Onnx.floats(batches.mask.copyOfRange(index * per, (index + 1) * per), shape),
            "lr" to Onnx.scalar(lr),
            "clip" to Onnx.scalar(gradClip),
        )
        return Onnx.run(trainStep, inputs) { r -> Onnx.floatsOf(r, "new_weights") to Onnx.floatsOf(r, "loss")[0] }
    }

    override fun close() {
        // Close only the sessions that were opened.
        if (localUpdateLazy.isInitialized()) localUpdate.close()
        if (trainStepLazy.isInitialized()) trainStep.close()
    }
}
