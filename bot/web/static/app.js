// debunkbot's own script: no inline scripts anywhere (the Content-Security-Policy forbids them).
// htmx requests that change something carry the session's CSRF token in a header.
document.addEventListener("htmx:configRequest", function (event) {
  var meta = document.querySelector('meta[name="csrf-token"]');
  if (meta) { event.detail.headers["X-CSRF-Token"] = meta.content; }
});
