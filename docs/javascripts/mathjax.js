// MathJax 3 configuration for pymdownx.arithmatex (generic mode). MathJax itself is vendored
// (assets/vendor/mathjax/tex-svg-full.js), so formulas render without internet.
// arithmatex wraps $...$ in \( \) and $$...$$ in \[ \] inside elements of class "arithmatex";
// MathJax typesets only those elements.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  svg: {
    fontCache: "global",
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};

// With Material's instant navigation a new page replaces the old one without a reload:
// typeset it then. On a full page load MathJax typesets the page by itself.
if (typeof document$ !== "undefined") {
  let first = true;
  document$.subscribe(() => {
    if (first) {
      first = false;
      return;
    }
    if (window.MathJax && MathJax.typesetPromise) {
      MathJax.typesetClear();
      MathJax.texReset();
      MathJax.typesetPromise();
    }
  });
}
