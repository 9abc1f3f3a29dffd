package dev.fedkey.app

import android.app.Activity
import android.os.Bundle as AndroidBundle
import android.text.Editable
import android.text.TextWatcher
import android.widget.Button
import android.widget.EditText
import android.widget.LinearLayout
import android.widget.TextView
import fedkey.client.Bundle
import fedkey.client.KeyboardContext
import fedkey.client.Predictor
import fedkey.client.Trainer
import fedkey.client.wire.StageConfig
import fedkey.client.wire.UpdateEncoder
import java.io.File
import java.util.concurrent.Executors

/**
 * A thin demo: a text field with a suggestion strip, and a button that runs one federated round locally
 * (train on the messages typed so far → clip/compress → wire bytes). All logic lives in core (fedkey.client).
 *
 * The bundle is expected in `filesDir/bundle` (the app downloads it from the server in production; for the demo,
 * copy a `fedkey export` bundle there, e.g. `adb push runs/demo/bundle /data/data/dev.fedkey.app/files/`).
 */
class MainActivity : Activity() {
    private val worker = Executors.newSingleThreadExecutor()
    private var predictor: Predictor? = null
    private var keyboard: KeyboardContext? = null
    private val sentMessages = ArrayList<String>() // stays on the phone; only the encoded delta leaves it

    override fun onCreate(savedInstanceState: AndroidBundle?) {
        super.onCreate(savedInstanceState)
        val input = EditText(this)
        val strip = TextView(this)
        val send = Button(this).apply { text = "Send" }
        val train = Button(this).apply { text = "Train + encode update" }
        val status = TextView(this)
        setContentView(LinearLayout(this).apply {
            orientation = LinearLayout.VERTICAL
            listOf(input, strip, send, train, status).forEach { addView(it) }
        })

        worker.execute {
            val result = runCatching {
                val bundle = Bundle.load(File(filesDir, "bundle"))
                Predictor(bundle).also { p -> predictor = p; keyboard = p.newContext() }
                "model version ${bundle.modelVersion} loaded"
            }.getOrElse { "no usable bundle: ${it.message}" }
            runOnUiThread { status.text = result }
        }

        input.addTextChangedListener(object : TextWatcher {
            override fun afterTextChanged(s: Editable) {
                val text = s.toString()
                worker.execute {
                    val ctx = keyboard ?: return@execute
                    ctx.setText(text)
                    val words = ctx.suggest(3).joinToString("   ") { it.word }
                    runOnUiThread { strip.text = words }
                }
            }
            override fun beforeTextChanged(s: CharSequence, start: Int, count: Int, after: Int) {}
            override fun onTextChanged(s: CharSequence, start: Int, before: Int, count: Int) {}
        })

        send.setOnClickListener {
            sentMessages.add(input.text.toString())
            input.setText("")
            worker.execute { keyboard?.reset() }
        }

        train.setOnClickListener {
            val messages = sentMessages.toList()
            worker.execute {
                val text = runCatching { runRound(messages) }.getOrElse { "round failed: ${it.message}" }
                runOnUiThread { status.text = text }
            }
        }
    }

    /** One local round: what the server's round configuration would specify is hard-coded here. */
    private fun runRound(messages: List<String>): String {
        val bundle = predictor?.bundle ?: return "no bundle"
        if (messages.isEmpty()) return "type and send a few messages first"
        val result = Trainer(bundle).use { it.train(messages, epochs = 1, batchSize = 8, lr = 0.5f, gradClip = 1f, deltaClip = 0.5f) }
        val stages = StageConfig.listFromJson(
            """[{"kind": "clip", "norm": 0.5}, {"kind": "random_k", "fraction": 0.1}, {"kind": "quantize", "bits": 4}]""",
        )
        val update = UpdateEncoder(stages, bundle.numParameters).encode(
            result.delta, modelVersion = bundle.modelVersion, round = 0, phoneId = 1,
        )
        // Upload update.bytes to the gateway (server/gateway) together with the round's metadata.
        return "losses ${result.losses.joinToString { "%.3f".format(it) }}; update ${update.bytes.size} bytes"
    }

    override fun onDestroy() {
        worker.execute { predictor?.close() }
        worker.shutdown()
        super.onDestroy()
    }
}
