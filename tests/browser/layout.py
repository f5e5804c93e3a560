"""Layout measurements shared by the browser tests."""


def line_count(locator, *, first_text_only: bool = False) -> int:
    """How many lines the element's text (or only its first text node) is laid out on."""
    return locator.evaluate(
        """(el, firstOnly) => {
          const tops = new Set();
          const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
          while (walker.nextNode()) {
            if (!walker.currentNode.textContent.trim()) continue;
            const range = document.createRange();
            range.selectNodeContents(walker.currentNode);
            for (const rect of range.getClientRects()) tops.add(Math.round(rect.top));
            if (firstOnly) break;
          }
          return tops.size;
        }""",
        first_text_only,
    )
