// EdgeLoop console: keyboard shortcuts. Any element with data-key="<key>" is activated by that key
// (labeling: 1, 2, ... for the classes, s to skip, u to undo), unless the focus is in a text field.
(function () {
  "use strict";
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    var target = event.target;
    if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) return;
    var key = event.key.length === 1 ? event.key.toLowerCase() : "";
    if (!key) return;
    var control = document.querySelector('[data-key="' + key + '"]');
    if (!control || control.disabled) return;
    event.preventDefault();
    control.click();
  });
  // A form sent once is not sent twice by a quick second key press (labels the same picture twice otherwise).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.dataset.sent === "1" && !form.hasAttribute("hx-post")) { event.preventDefault(); return; }
    form.dataset.sent = "1";
  });
})();
