// Small glue for htmx: open any <dialog> swapped into #modal, close it on "closeModal".
document.addEventListener("htmx:afterSwap", function (event) {
  var dialog = event.detail.target.querySelector && event.detail.target.querySelector("dialog");
  if (dialog && !dialog.open) { dialog.showModal(); }
});
document.body && document.body.addEventListener("closeModal", function () {
  var dialog = document.querySelector("#modal dialog");
  if (dialog) { dialog.close(); dialog.remove(); }
});
document.addEventListener("click", function (event) {
  var closer = event.target.closest("[data-close-modal]");
  if (closer) {
    event.preventDefault();
    var dialog = closer.closest("dialog");
    if (dialog) { dialog.close(); dialog.remove(); }
  }
});
