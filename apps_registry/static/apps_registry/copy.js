// The "Copy" button beside an API token shown once: the clipboard API where the page is a
// secure context, else selecting the text so that Ctrl-C works.
(function () {
  "use strict";
  var button = document.getElementById("appsup-copy-token");
  if (!button) return;
  var field = document.getElementById(button.dataset.target);
  var result = document.getElementById("appsup-copy-result");
  button.addEventListener("click", function () {
    field.select();
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(field.value).then(
        function () { result.textContent = "Copied."; },
        function () { result.textContent = "Selected: press Ctrl-C to copy."; }
      );
    } else {
      result.textContent = "Selected: press Ctrl-C to copy.";
    }
  });
})();
