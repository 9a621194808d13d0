// gpt2_ref_encode.js - the reference side of test_tok_gpt2.sh: encodes a UTF-8 corpus with the
// npm package gpt-3-encoder (GPT-2's vocabulary and OpenAI's encoder.py ported to JS) and
// compares the ids with ours. On the first difference it prints the position, both id
// sequences around it and the text each side's tokens spell, and exits 1.
//
// Usage: node gpt2_ref_encode.js NODE_MODULES_DIR CORPUS OUR_IDS
'use strict';
const fs = require('fs');
const path = require('path');

const [modules, corpusPath, oursPath] = process.argv.slice(2);
if (!oursPath) {
    console.error('usage: node gpt2_ref_encode.js NODE_MODULES_DIR CORPUS OUR_IDS');
    process.exit(2);
}
const pkg = path.join(modules, 'gpt-3-encoder');
const { encode } = require(pkg);
const raw = fs.readFileSync(corpusPath);
const text = raw.toString('utf8');
if (!Buffer.from(text, 'utf8').equals(raw)) {
    console.error(`${corpusPath}: not valid UTF-8 (the JS encoder works on strings)`);
    process.exit(2);
}
const ref = encode(text);
const ours = fs.readFileSync(oursPath, 'utf8').split(/\s+/).filter(s => s.length).map(Number);

// id -> the bytes it stands for, through GPT-2's byte<->unicode map
const encoder = JSON.parse(fs.readFileSync(path.join(pkg, 'encoder.json'), 'utf8'));
const decoder = {};
for (const [tok, id] of Object.entries(encoder)) decoder[id] = tok;
const byteOf = {};
{
    const bs = [];
    for (let b = 33; b <= 126; b++) bs.push(b);
    for (let b = 161; b <= 172; b++) bs.push(b);
    for (let b = 174; b <= 255; b++) bs.push(b);
    let n = 0;
    for (let b = 0; b < 256; b++) {
        if (bs.includes(b)) byteOf[String.fromCharCode(b)] = b;
        else byteOf[String.fromCharCode(256 + n++)] = b;
    }
}
const spell = ids =>
    ids.map(id => (id in decoder ? JSON.stringify(Buffer.from([...decoder[id]].map(c => byteOf[c]))
        .toString('utf8')) : `<bad id ${id}>`)).join(' ');

const n = Math.min(ref.length, ours.length);
let i = 0;
while (i < n && ref[i] === ours[i]) i++;
if (i === ref.length && i === ours.length) {
    console.log(`identical: ${ref.length} ids for ${raw.length} bytes`);
    process.exit(0);
}
const lo = Math.max(0, i - 3);
console.log(`MISMATCH at id ${i} (reference ${ref.length} ids, ours ${ours.length})`);
console.log(`  reference ids ${ref.slice(lo, i + 6).join(' ')}`);
console.log(`  our ids       ${ours.slice(lo, i + 6).join(' ')}`);
console.log(`  reference pieces ${spell(ref.slice(i, i + 6))}`);
console.log(`  our pieces       ${spell(ours.slice(i, i + 6))}`);
console.log('  (pieces as UTF-8; a token holding part of a character shows U+FFFD)');
process.exit(1);
