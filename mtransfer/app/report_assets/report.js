
(() => {
  const data = JSON.parse(document.getElementById('report-data').textContent);
  const frames = data.frames, body = document.body;
  const slider = document.getElementById('slider'), label = document.getElementById('frame-label');
  const play = document.getElementById('play'), numbers = document.getElementById('numbers');
  let current = data.start, timer = null;

  function crisp(img) {  // nearest-neighbour pixels when a picture is shown at 1.5x its size or more
    if (img.naturalWidth) img.classList.toggle('crisp', img.clientWidth * devicePixelRatio >= 1.5 * img.naturalWidth);
  }
  const pictures = [...document.querySelectorAll('.pic img')];
  pictures.forEach(img => { img.addEventListener('load', () => crisp(img)); crisp(img); });
  addEventListener('resize', () => pictures.forEach(crisp));

  function show(index) {
    current = Math.max(0, Math.min(frames.length - 1, index));
    const frame = frames[current], errors = body.classList.contains('error-mode');
    for (const panel of document.querySelectorAll('.panel')) {
      const shown = frame.panels[panel.dataset.panel], pic = panel.querySelector('.pic');
      const alternative = errors && 'error' in shown, src = alternative ? shown.error : shown.src;
      const img = pic.querySelector('img.main');
      if (src) img.src = src;
      pic.classList.toggle('empty', !src || Boolean(shown.note));
      pic.querySelector('.note').textContent = shown.note || '';
      panel.querySelector('.detail').textContent = (alternative ? shown.error_detail : shown.detail) || '';
    }
    if (slider) slider.value = current;
    if (label) label.textContent = `frame ${frame.index} / ${frames[frames.length - 1].index}`;
    numbers.textContent = frame.numbers;
    for (const row of document.querySelectorAll('tr[data-frame]'))
      row.classList.toggle('current', Number(row.dataset.frame) === current);
    for (const plot of document.querySelectorAll('svg.plot')) {
      const x = Number(plot.dataset.x0) + Number(plot.dataset.dx) * current, cursor = plot.querySelector('.cursor');
      cursor.setAttribute('x1', x); cursor.setAttribute('x2', x);
    }
  }
  function toggle(name, on) { body.classList.toggle(name, on); show(current); }
  function playing(on) {
    clearInterval(timer); timer = null;
    if (on) timer = setInterval(() => show((current + 1) % frames.length), 1000 / data.fps);
    if (play) play.textContent = on ? '\u275A\u275A pause' : '\u25B6 play';
  }

  if (slider) slider.addEventListener('input', () => { playing(false); show(Number(slider.value)); });
  document.getElementById('prev')?.addEventListener('click', () => { playing(false); show(current - 1); });
  document.getElementById('next')?.addEventListener('click', () => { playing(false); show(current + 1); });
  play?.addEventListener('click', () => playing(timer === null));
  const flip = document.getElementById('flip'), errmap = document.getElementById('errmap');
  flip.addEventListener('change', () => toggle('flipped', flip.checked));
  errmap?.addEventListener('change', () => toggle('error-mode', errmap.checked));
  addEventListener('keydown', event => {
    if (event.altKey || event.ctrlKey || event.metaKey || event.target.closest('textarea, select')) return;
    const step = {ArrowRight: 1, ArrowLeft: -1}[event.key];
    if (step && frames.length > 1) {
      if (event.target !== slider) { playing(false); show(current + step); event.preventDefault(); }
    } else if (event.key === ' ' && play && event.target.tagName !== 'BUTTON') { playing(timer === null); event.preventDefault(); }
    else if (event.key === 's') flip.click();
    else if (event.key === 'e' && errmap) errmap.click();
  });
  for (const row of document.querySelectorAll('tr[data-frame]'))
    row.addEventListener('click', () => { playing(false); show(Number(row.dataset.frame)); });
  for (const point of document.querySelectorAll('svg.plot circle'))
    point.addEventListener('click', () => { playing(false); show(Number(point.dataset.frame)); });

  for (const table of document.querySelectorAll('table.sortable')) {
    const heads = [...table.tHead.rows[0].cells];
    heads.forEach((head, column) => head.querySelector('button').addEventListener('click', () => {
      const ascending = head.getAttribute('aria-sort') !== 'ascending';
      heads.forEach(h => h.removeAttribute('aria-sort'));
      head.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
      const value = row => row.cells[column].dataset.value;
      const rows = [...table.tBodies[0].rows].sort((a, b) => {
        const x = value(a), y = value(b);
        if (x === '' || y === '') return (x === '') - (y === '');  // missing values last either way
        const order = isNaN(x) || isNaN(y) ? x.localeCompare(y) : Number(x) - Number(y);
        return ascending ? order : -order;
      });
      rows.forEach(row => table.tBodies[0].appendChild(row));
    }));
  }
  for (const frame of frames)  // load every picture now so that scrubbing and playing never wait
    for (const shown of Object.values(frame.panels))
      for (const src of [shown.src, shown.error]) if (src) new Image().src = src;
  show(current);
})();
