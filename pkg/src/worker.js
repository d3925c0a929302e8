// The dedicated module worker behind `Sinkstar.inWorker`: it runs the same code as the page
// would (core.js) and answers the page's messages (remote.js). Every request carries an `id`;
// the worker answers it with events ('progress', 'step') and then one 'done' or 'error'.
// 'chat', 'dispose-chat' and 'abort' get no answer: their errors surface later. A reply is
// pulled piece by piece ('send', then 'pull'), so the worker generates only what the page
// reads, just as on the page.

import { loadModel, toError, SinkstarError } from './core.js';

/** @type {import('./core.js').Model | undefined} */
let model;
/** @type {Map<number, import('./core.js').Chat>} chats by the page's id */
const chats = new Map();
/**
 * A reply being streamed: its pieces, its abort, and the request now waiting on it.
 * @typedef {{ pieces: AsyncGenerator<string, void, undefined>, abort: AbortController, request: number }} Reply
 * @type {Map<number, Reply>} by the id of the request that began it
 */
const replies = new Map();

/**
 * The next piece of a reply for request `request`; forgets the reply once it has ended.
 * @param {number} id the reply's
 * @param {number} request
 */
async function pull(id, request) {
  const reply = replies.get(id);
  if (!reply) throw new SinkstarError('internal', 'the reply has already ended');
  reply.request = request;
  try {
    const { done, value } = await reply.pieces.next();
    if (done) replies.delete(id);
    return { done, value };
  } catch (e) {
    replies.delete(id);
    throw e;
  }
}

/** @param {number} id */
function chat(id) {
  const found = chats.get(id);
  if (!found) throw new SinkstarError('disposed', 'the chat has been disposed');
  return found;
}

/** @param {MessageEvent} event */
self.onmessage = async ({ data: m }) => {
  /** @param {string} type @param {object} [payload] */
  const answer = (type, payload) => self.postMessage({ id: m.id, type, ...payload });
  try {
    switch (m.type) {
      case 'load':
        model = await loadModel(m.source, { ...m.options, onProgress: (progress) => answer('progress', { progress }) });
        return answer('done');
      case 'info':
        return answer('done', { value: await /** @type {any} */ (model).info() });
      case 'bandwidth':
        return answer('done', { value: await /** @type {any} */ (model).bandwidth() });
      case 'chat':
        chats.set(m.chat, /** @type {any} */ (model).chat(m.options));
        return;
      case 'dispose-chat':
        chats.get(m.chat)?.dispose();
        chats.delete(m.chat);
        return;
      case 'chat-info':
        return answer('done', { value: await chat(m.chat).info() });
      case 'reset':
        await chat(m.chat).reset();
        return answer('done');
      case 'profile-decode': {
        const profiling = chat(m.chat).profileDecode(m.repeat);
        chats.delete(m.chat);
        return answer('done', { value: await profiling });
      }
      case 'send': {
        const abort = new AbortController();
        /** @type {Reply} */
        const reply = { request: m.id, abort, pieces: /** @type {any} */ (null) };
        // A step belongs to the request that is making it: 'send' or a later 'pull'.
        const onStep = m.steps ? (/** @type {object} */ info) => self.postMessage({ id: reply.request, type: 'step', info }) : undefined;
        reply.pieces = chat(m.chat).send(m.text, { ...m.options, signal: abort.signal, onStep });
        replies.set(m.id, reply);
        return answer('done', { value: await pull(m.id, m.id) });
      }
      case 'pull':
        return answer('done', { value: await pull(m.send, m.id) });
      case 'return': {
        const reply = replies.get(m.send);
        replies.delete(m.send);
        if (reply) {
          reply.request = m.id;
          await reply.pieces.return();
        }
        return answer('done');
      }
      case 'abort':
        // The reply's loop checks its signal between tokens.
        replies.get(m.send)?.abort.abort();
        return;
      default:
        throw new SinkstarError('internal', `unknown message ${m.type}`);
    }
  } catch (e) {
    const { code, message } = toError(e);
    answer('error', { error: { code, message } });
  }
};
