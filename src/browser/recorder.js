// Injected into every page of a recording (add_init_script). Turns the
// person's clicks, typing and key presses into events for the farm, each
// with the most stable selector that is unique on the page.
(() => {
  if (window.__reloginRecorder) return;
  window.__reloginRecorder = true;

  const send = (event) => {
    event.t = performance.timeOrigin + performance.now();
    try { window.__reloginRecord(JSON.stringify(event)); } catch (_) { /* binding not ready */ }
  };
  const quote = (s) => JSON.stringify(s);
  const count = (sel) => { try { return document.querySelectorAll(sel).length; } catch (_) { return 0; } };
  const text = (s) => (s || '').replace(/\s+/g, ' ').trim();

  const TEXT_TYPES = ['', 'text', 'password', 'email', 'tel', 'number', 'search', 'url'];
  const isTextField = (el) =>
    el instanceof HTMLTextAreaElement ||
    (el instanceof HTMLInputElement && TEXT_TYPES.includes((el.getAttribute('type') || '').toLowerCase()));
  // One-time codes change every 30 s: recorded as ${totp}, never as typed.
  const isOtp = (el) =>
    el.getAttribute('autocomplete') === 'one-time-code' ||
    /(^|[-_ ])(otp|totp|2fa|mfa|code)([-_ ]|$)|one.?time|verification/i.test(
      [el.id, el.name, el.getAttribute('aria-label') || ''].join(' '));
  // Ids like "input-4821" or React's ":r3:" change between page loads.
  const looksGenerated = (id) => /\d{3,}|:|^[a-f0-9-]{16,}$/i.test(id);

  const labelOf = (el) => text((el.labels && el.labels[0] && el.labels[0].innerText) || '');
  const roleOf = (el) => {
    const explicit = el.getAttribute('role');
    if (explicit) return explicit;
    const tag = el.localName, type = (el.getAttribute('type') || '').toLowerCase();
    if (tag === 'button' || (tag === 'input' && ['submit', 'button', 'reset'].includes(type))) return 'button';
    if (tag === 'a' && el.hasAttribute('href')) return 'link';
    if (tag === 'input' && (type === 'checkbox' || type === 'radio')) return type;
    return null;
  };
  const nameOf = (el) =>
    text(el.getAttribute('aria-label') || labelOf(el) || el.innerText || el.value || el.title);
  const sameRoleAndName = (role, name) =>
    Array.from(document.querySelectorAll('*')).filter((e) => roleOf(e) === role && nameOf(e) === name).length;
  const sameLabel = (label) =>
    Array.from(document.querySelectorAll('input, textarea, select')).filter((e) => labelOf(e) === label).length;

  // id, name, label, role+text, data-testid, then an nth-child chain.
  function selectorFor(el) {
    if (el.id && !looksGenerated(el.id)) {
      const sel = '#' + CSS.escape(el.id);
      if (count(sel) === 1) return sel;
    }
    const name = el.getAttribute('name');
    if (name) {
      const sel = `${el.localName}[name=${quote(name)}]`;
      if (count(sel) === 1) return sel;
    }
    const label = labelOf(el);
    if (label && sameLabel(label) === 1) return `internal:label=${quote(label)}s`;
    const role = roleOf(el), accessible = nameOf(el);
    if (role && accessible && sameRoleAndName(role, accessible) === 1) return `role=${role}[name=${quote(accessible)}s]`;
    const testId = el.getAttribute('data-testid');
    if (testId) {
      const sel = `[data-testid=${quote(testId)}]`;
      if (count(sel) === 1) return sel;
    }
    return cssPath(el);
  }

  function cssPath(el) {
    const parts = [];
    for (; el && el !== document.body && el.parentElement; el = el.parentElement) {
      if (el.id && !looksGenerated(el.id) && count('#' + CSS.escape(el.id)) === 1) {
        parts.unshift('#' + CSS.escape(el.id));
        break;
      }
      const index = Array.from(el.parentElement.children).indexOf(el) + 1;
      parts.unshift(`${el.localName}:nth-child(${index})`);
    }
    if (el === document.body) parts.unshift('body');
    return parts.join(' > ');
  }

  const CLICKABLE = 'button, a[href], input[type=submit], input[type=button], input[type=checkbox], ' +
    'input[type=radio], [role=button], [role=link], [role=checkbox], summary';

  // The site and form a field is in: the same field filled again there is
  // a retry (the path may change after a failed submit; the site does not).
  const formOf = (el) => {
    const f = el.form || el.closest('form');
    return location.origin + (f ? '#' + (f.id || f.getAttribute('name') || 'form') : '');
  };

  document.addEventListener('input', (e) => {
    const el = e.target;
    if (!e.isTrusted || !isTextField(el)) return;
    const password = el.type === 'password';
    send({ kind: 'fill', selector: selectorFor(el), value: el.value, password, otp: !password && isOtp(el), form: formOf(el) });
  }, true);

  // Enter in a form field also "clicks" its submit button (detail 0): that
  // click is the same action as the key press, and must not replay twice.
  let lastEnter = 0;

  document.addEventListener('click', (e) => {
    if (!e.isTrusted || !(e.target instanceof Element)) return;
    if (e.detail === 0 && performance.now() - lastEnter < 500) return;
    const el = e.target.closest(CLICKABLE) || e.target;
    if (isTextField(el)) return; // focusing a field: the fill covers it
    send({ kind: 'click', selector: selectorFor(el) });
  }, true);

  document.addEventListener('keydown', (e) => {
    if (!e.isTrusted || e.key !== 'Enter' || !(e.target instanceof Element)) return;
    lastEnter = performance.now();
    send({ kind: 'press', selector: selectorFor(e.target), key: 'Enter' });
  }, true);
})();
