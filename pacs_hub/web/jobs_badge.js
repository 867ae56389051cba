// PACS Hub: processing jobs in OHIF's header (issue 7). Appended to /app-config.js.
//
// OHIF v3 draws the header's logo slot (study list and viewer) with
// window.config.whiteLabeling.createLogoComponentFn(React). This returns the hub's name
// and a chip with the processing jobs of the studies on screen (viewer) or of every
// study the user may view (study list): state, stage and percent while a job runs, a
// link to its result series once it succeeded. The jobs come from the hub's own
// /api/processing/jobs (same origin, the page's session cookie), which applies the
// access policy; nothing else is requested.
(function () {
  'use strict';
  var API = '/api/processing/jobs';
  var ACTIVE = { queued: true, running: true, retrying: true };
  var POLL_ACTIVE_MS = 1500;
  var POLL_IDLE_MS = 5000;
  var watched = {}; // ids seen queued or running while this page was open
  var Component = null; // made once: a new type each render would remount it

  function studiesOnScreen() {
    var uids = [];
    new URLSearchParams(window.location.search).forEach(function (value, name) {
      if (name.toLowerCase() === 'studyinstanceuids') {
        uids = uids.concat(value.split(/[,\\]/));
      }
    });
    return uids.map(function (u) { return u.trim(); }).filter(Boolean).slice(0, 10);
  }

  function getJson(url) {
    return fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/json' } })
      .then(function (answer) {
        if (!answer.ok) { throw new Error('jobs API answered ' + answer.status); }
        return answer.json();
      });
  }

  function fetchJobs() {
    var studies = studiesOnScreen();
    var urls = studies.length
      ? studies.map(function (uid) { return API + '?limit=50&study=' + encodeURIComponent(uid); })
      : [API + '?limit=50'];
    return Promise.all(urls.map(getJson)).then(function (lists) {
      var shown = [];
      [].concat.apply([], lists).forEach(function (job) {
        if (ACTIVE[job.state]) { watched[job.id] = true; }
        if (ACTIVE[job.state] || watched[job.id]) { shown.push(job); }
      });
      return shown;
    });
  }

  function resultsUrl(job) {
    return '/viewer?StudyInstanceUIDs=' + encodeURIComponent(job.study_uid) +
      '&SeriesInstanceUIDs=' + job.result_series.map(encodeURIComponent).join(',');
  }

  function describe(job) {
    var steps = job.pipeline.join('+');
    if (ACTIVE[job.state]) {
      return Math.round(job.percent) + '% ' + (job.stage || job.state) + ' \u00b7 ' + steps;
    }
    return steps + ' ' + (job.state === 'succeeded' ? 'done' : job.state);
  }

  function make(React) {
    var h = React.createElement;
    var stop = function (event) { event.stopPropagation(); };

    function bar(job) {
      return h('span', {
        style: { display: 'block', height: 3, marginTop: 2, background: '#333', borderRadius: 2 },
      }, h('span', {
        'data-cy': 'pacs-hub-job-bar',
        style: {
          display: 'block', height: 3, borderRadius: 2, background: '#5acce6',
          width: Math.max(0, Math.min(100, job.percent)) + '%',
        },
      }));
    }

    function line(job, key) {
      var parts = [h('span', { key: 't', 'data-cy': 'pacs-hub-job-text' }, describe(job))];
      var text = { display: 'block', whiteSpace: 'nowrap', overflow: 'hidden', textOverflow: 'ellipsis' };
      if (job.state === 'succeeded' && job.result_series.length) {
        parts.push(' ', h('a', {
          key: 'a', href: resultsUrl(job), 'data-cy': 'pacs-hub-job-results',
          style: { color: '#5acce6', textDecoration: 'underline' },
        }, 'open results'));
      }
      return h('span', {
        key: key, 'data-cy': 'pacs-hub-job', 'data-job-id': job.id, 'data-state': job.state,
        title: job.error || (job.stage + ' ' + job.percent + '%'),
        style: text,
      }, parts, ACTIVE[job.state] ? bar(job) : null);
    }

    return function PacsHubJobs() {
      var state = React.useState([]);
      var jobs = state[0];
      var setJobs = state[1];
      var openState = React.useState(false);
      React.useEffect(function () {
        var timer = null;
        var alive = true;
        function poll() {
          if (document.hidden) { timer = setTimeout(poll, POLL_IDLE_MS); return; }
          fetchJobs().then(function (shown) {
            if (!alive) { return; }
            setJobs(shown);
            var busy = shown.some(function (job) { return ACTIVE[job.state]; });
            timer = setTimeout(poll, busy ? POLL_ACTIVE_MS : POLL_IDLE_MS);
          }, function () {
            if (alive) { setJobs([]); timer = setTimeout(poll, POLL_IDLE_MS); }
          });
        }
        poll();
        return function () { alive = false; clearTimeout(timer); };
      }, []);
      var first = jobs.filter(function (job) { return ACTIVE[job.state]; })[0] || jobs[0];
      var children = [h('span', {
        key: 'name', style: { color: '#fff', fontWeight: 600, fontSize: 16, marginRight: 10 },
      }, 'PACS Hub')];
      if (first) {
        var others = jobs.length - 1;
        children.push(h('span', {
          key: 'chip', 'data-cy': 'pacs-hub-jobs-summary',
          style: { display: 'inline-block', maxWidth: 170, overflow: 'hidden', fontSize: 12,
                   color: '#d0d0d0', cursor: others ? 'pointer' : 'default', lineHeight: '14px' },
          onClick: function (event) { stop(event); openState[1](!openState[0]); },
        }, line(first, 'first'), others ? h('span', { style: { color: '#5acce6' } },
          '+' + others + ' more') : null));
      }
      if (openState[0] && jobs.length > 1) {
        children.push(h('div', {
          key: 'list', 'data-cy': 'pacs-hub-jobs-list', onClick: stop,
          style: { position: 'absolute', top: 40, left: 0, zIndex: 1000, minWidth: 260,
                   padding: 8, fontSize: 12, color: '#d0d0d0', background: '#090c29',
                   border: '1px solid #3a3f99', borderRadius: 4 },
        }, jobs.map(function (job) { return line(job, job.id); })));
      }
      return h('div', {
        'data-cy': 'pacs-hub-jobs',
        style: { position: 'relative', display: 'flex', alignItems: 'center', cursor: 'default' },
      }, children);
    };
  }

  window.config.whiteLabeling = {
    createLogoComponentFn: function (React) {
      Component = Component || make(React);
      return React.createElement(Component);
    },
  };
})();
